"""Robust training: the subset samplers, guidance, the consistency term, and the training step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss

from cggm_seg.balancing import (
    HeadMonitor,
    RobustTraining,
    consistency,
    pick_recipe,
    sample_subsets,
    trainable_parameters,
)
from cggm_seg.balancing.branches import FeatureTap
from cggm_seg.balancing.robust import _zero_fill
from cggm_seg.handlers import BalancingHandler
from cggm_seg.networks import MultiEncoderSegNet, MultiViewNet, make_heads, present_channels

from .toy_nets import MODALITIES, SegHead, ToySegNet


def _small_net(mask_missing: bool = True) -> MultiEncoderSegNet:
    """The segmentation network at two levels of 8 and 16 channels."""
    return MultiEncoderSegNet(channels=(8, 16), blocks_down=(0, 1), blocks_up=(1,), mask_missing=mask_missing)


# -- samplers ---------------------------------------------------------------------------------------
def test_bernoulli_at_one_half_is_uniform_over_the_fifteen_non_empty_subsets():
    keep = sample_subsets(30_000, torch.full((4,), 0.5), generator=torch.Generator().manual_seed(0))
    assert keep.any(dim=1).all()
    codes = (keep.long() * torch.tensor([1, 2, 4, 8])).sum(dim=1)
    counts = torch.bincount(codes, minlength=16)
    assert counts[0] == 0
    expected = 30_000 / 15  # 2000 each; binomial std about 43
    assert ((counts[1:] - expected).abs() < 200).all(), counts.tolist()


def test_bernoulli_keeps_everything_at_drop_zero_and_follows_unequal_probabilities():
    assert sample_subsets(50, torch.zeros(4)).all()
    keep = sample_subsets(
        20_000, torch.tensor([0.1, 0.5, 0.5, 0.8]), generator=torch.Generator().manual_seed(1)
    )
    # P(keep_i | non-empty) = (1 - p_i) / P(non-empty); P(empty) = 0.1 * 0.5 * 0.5 * 0.8 = 0.02
    expected = torch.tensor([0.9, 0.5, 0.5, 0.2]) / 0.98
    assert torch.allclose(keep.double().mean(dim=0), expected.double(), atol=0.015)


def test_size_sampler_keeps_k_uniform_in_one_to_m_and_each_sequence_alike():
    g = torch.Generator().manual_seed(2)
    keep = sample_subsets(8_000, torch.zeros(4), kind="size", generator=g)
    sizes = torch.bincount(keep.sum(dim=1), minlength=5)
    assert sizes[0] == 0 and ((sizes[1:] - 2000).abs() < 150).all(), sizes.tolist()
    # P(keep_i) = E[k] / M = 2.5 / 4 for every sequence
    assert torch.allclose(keep.double().mean(dim=0), torch.full((4,), 0.625).double(), atol=0.02)


def test_samplers_refuse_bad_settings():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sample_subsets(2, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="kind must be"):
        sample_subsets(2, torch.zeros(2), kind="uniform")


# -- guidance ---------------------------------------------------------------------------------------
# -- consistency -------------------------------------------------------------------------------------
def test_consistency_forms_by_hand():
    zero = torch.zeros(1, 3, 2, 2, 2)
    assert float(consistency(zero, zero, "bce")) == pytest.approx(math.log(2))
    assert float(consistency(zero, torch.full_like(zero, 50.0), "mse")) == pytest.approx(0.25)
    assert float(consistency(zero, zero, "kl")) == pytest.approx(0.0, abs=1e-6)
    # teacher p = 0.75, student p = 0.5: 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
    teacher = torch.full_like(zero, math.log(3.0))
    assert float(consistency(zero, teacher, "kl")) == pytest.approx(0.130812, abs=1e-5)
    # temperature 2: logits halved and T^2 = 4; teacher logit ln 3 / 2 -> p = sqrt(3) / (1 + sqrt(3))
    t = math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * (t * math.log(t / 0.5) + (1 - t) * math.log((1 - t) / 0.5))
    assert float(consistency(zero, teacher, "kl", temperature=2.0)) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="form must be"):
        consistency(zero, zero, "l1")


def test_consistency_forms_of_class_logits_and_regression_outputs_by_hand():
    student = torch.zeros(2, 2)  # softmax (0.5, 0.5)
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # (0.75, 0.25) and (0.5, 0.5)
    # KL of the first sample 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812, of the second 0; mean over samples
    assert float(consistency(student, teacher, "softmax_kl")) == pytest.approx(0.130812 / 2, abs=1e-5)
    # temperature 2: teacher (sqrt 3, 1) / (1 + sqrt 3), times T^2 = 4
    t = math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * (t * math.log(t / 0.5) + (1 - t) * math.log((1 - t) / 0.5)) / 2
    assert float(consistency(student, teacher, "softmax_kl", temperature=2.0)) == pytest.approx(
        expected, abs=1e-5
    )
    assert float(consistency(torch.zeros(3, 1), torch.tensor([[1.0], [2.0], [3.0]]), "l2")) == pytest.approx(
        14 / 3
    )


def test_consistency_does_not_train_the_teacher():
    student = torch.zeros(1, 3, 2, 2, 2, requires_grad=True)
    teacher = torch.ones(1, 3, 2, 2, 2, requires_grad=True)
    consistency(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "half"}, "sampler must be"),
        ({"drop": 1.0}, r"drop must lie"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"distill_weight": 0.5}, "set full_view=True"),
        ({"sep_weight": -0.1}, "sep_weight must be"),
        ({"distill": "l1", "full_view": True}, "distill must be"),
    ],
)
def test_recipe_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobustTraining(**kwargs)


def test_uniform_sampler_is_bernoulli_at_one_half_and_pick_recipe_checks():
    assert RobustTraining(sampler="uniform", drop=0.2).drop == 0.5
    recipes = {"none": None, "robust": RobustTraining()}
    assert pick_recipe(recipes, "none") is None and pick_recipe(recipes, "robust") is recipes["robust"]
    with pytest.raises(ValueError, match="recipe must be one of"):
        pick_recipe(recipes, "two_view")
    with pytest.raises(ValueError, match="must build a RobustTraining"):
        pick_recipe({"x": {"sampler": "uniform"}}, "x")


# -- feature masking ----------------------------------------------------------------------------------
def test_present_channels_by_hand():
    x = torch.ones(3, 4, 2, 2, 2)
    x[0, 1] = 0
    x[1] = 0  # nothing known: all present
    x[2, 0, 0, 0, 0] = 0  # one zero voxel is not a missing sequence
    assert present_channels(x).tolist() == [[True, False, True, True], [True] * 4, [True] * 4]


def test_masked_network_ignores_a_missing_sequences_encoder():
    torch.manual_seed(0)
    net = _small_net().eval()
    x = torch.randn(2, 4, 8, 8, 8)
    x[0, 1] = 0  # t1ce missing in sample 0
    before = net(x)
    with torch.no_grad():
        for p in net.encoders["t1ce"].parameters():
            p.add_(torch.randn_like(p))
    after = net(x)
    assert torch.allclose(before[0], after[0], atol=1e-6)  # sample 0 does not see t1ce's encoder
    assert not torch.allclose(before[1], after[1], atol=1e-3)  # sample 1 does
    unmasked = _small_net(mask_missing=False).eval()
    unmasked.load_state_dict(net.state_dict())
    assert torch.allclose(unmasked(x)[1], after[1], atol=1e-6)  # nothing missing: the same network


# -- the training step ----------------------------------------------------------------------------------
def _trainer(net, recipe, heads=None, method=None, handlers=(), epochs=1, accumulation=1, steps=3, lr=0.1):
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 4, 8, 8, 8), "label": (torch.rand(1, 3, 8, 8, 8) > 0.5).float()}] * steps
    optimizer = torch.optim.SGD(trainable_parameters(net, heads), lr=lr)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=DiceLoss(sigmoid=True),
        train_handlers=list(handlers),
        iteration_update=recipe.iteration(heads, method),
        accumulation_steps=accumulation,
    )


def test_two_view_step_trains_network_and_heads_and_reports_its_terms():
    net = ToySegNet()
    heads = torch.nn.ModuleDict({m: SegHead() for m in MODALITIES})
    recipe = RobustTraining(full_view=True, distill_weight=0.5, sep_weight=0.5, feature_masking=False)
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    monitor = BalancingHandler(HeadMonitor(), {m: SegHead() for m in MODALITIES})
    trainer = _trainer(net, recipe, heads, handlers=[monitor])
    trainer.run()
    state = trainer.state
    for term in ("robust_full", "robust_subset", "robust_distill", "robust_sep"):
        assert math.isfinite(getattr(state, term)), term
    total = state.robust_full + state.robust_subset + state.robust_distill + state.robust_sep
    output = state.output[0]  # decollated by the trainer
    assert float(output["loss"]) == pytest.approx(total, rel=1e-5)
    assert output["pred"].shape == (3, 8, 8, 8)
    # the heads' loss trains the heads (they are in the optimizer)
    assert any(not torch.equal(before[k], v) for k, v in heads.state_dict().items())
    assert len(monitor.history) == 3  # the balancing handler ran on every step


def test_sep_loss_reaches_the_encoders():
    net = ToySegNet()
    heads = torch.nn.ModuleDict({m: SegHead() for m in MODALITIES})
    recipe = RobustTraining(full_view=True, sep_weight=1.0, feature_masking=False)
    step = recipe.iteration(heads)
    trainer = _trainer(net, recipe, heads)
    trainer.iteration_update = None
    step._check(trainer)
    x = torch.randn(1, 4, 8, 8, 8)
    net(x)
    loss = step._sep_loss(trainer, (torch.rand(1, 3, 8, 8, 8) > 0.5).float(), None)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoders.parameters())
    assert net.final.weight.grad is None  # the fused path is not in the heads' loss


def test_sep_heads_of_the_segmentation_network_train_its_encoders_linearly_in_the_weight():
    # one SGD step (lr 1, no momentum): each parameter moves by -grad, and grad is
    # grad(task loss) + w * grad(heads' loss), so the encoders' moves are affine in w
    def step(weight: float, detach: bool = False) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = _small_net()
        heads = make_heads("segmentation", net, level=1, detach=detach)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        recipe = RobustTraining(sampler="none", sep_weight=weight)
        _trainer(net, recipe, heads, steps=1, lr=1.0).run()
        return {k: v - before[k] for k, v in net.state_dict().items() if v.is_floating_point()}

    moves = [step(w) for w in (0.0, 1.0, 2.0)]
    encoder = [k for k in moves[0] if k.startswith("encoders.t1.") and k.endswith("weight")]
    assert encoder
    for k in encoder:
        first, second = moves[1][k] - moves[0][k], moves[2][k] - moves[1][k]
        assert first.abs().max() > 1e-6, k  # the heads' loss reaches the encoder
        assert torch.allclose(first, second, atol=1e-5), k
    assert torch.equal(moves[0]["final.weight"], moves[2]["final.weight"])  # not the fused decoder
    with pytest.raises(ValueError, match="detach=False"):
        step(1.0, detach=True)


def test_warmup_epochs_train_the_full_view_only():
    recipe = RobustTraining(warmup_epochs=1, feature_masking=False)
    trainer = _trainer(ToySegNet(), recipe, epochs=2)
    trainer.run()
    first, second = trainer._process_function.history
    assert "robust_full" in first and "robust_subset" not in first
    assert "robust_subset" in second


@pytest.mark.parametrize(
    "recipe, kwargs, match",
    [
        (RobustTraining(), {}, "feature_masking=True needs a network"),
        (RobustTraining(feature_masking=False), {"accumulation": 2}, "gradient accumulation"),
    ],
)
def test_step_refuses_what_it_cannot_do(recipe, kwargs, match):
    trainer = _trainer(ToySegNet(), recipe, **kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.run()


def test_sep_recipe_needs_heads():
    with pytest.raises(ValueError, match="needs the per-sequence heads"):
        RobustTraining(sep_weight=0.5).iteration(None)


def test_every_subset_of_a_uniform_sampler_reaches_the_network():
    # the masked inputs of a one-view recipe: each row zero exactly where the sampler dropped it
    g = torch.Generator().manual_seed(3)
    keep = sample_subsets(200, torch.full((4,), 0.5), generator=g)
    x = torch.randn(200, 4, 2, 2, 2) + 10
    masked = _zero_fill(x, keep)
    assert torch.equal(present_channels(masked), keep)
    seen = {tuple(row.tolist()) for row in keep}
    assert len(seen) == 15 and seen <= {s for s in itertools.product([False, True], repeat=4) if any(s)}


def test_forward_views_equal_separate_forwards_of_zero_filled_inputs():
    torch.manual_seed(0)
    net = _small_net().eval()
    x = torch.randn(2, 4, 8, 8, 8)
    keeps = [torch.tensor([[True, False, True, False], [False, False, False, True]])]
    full, view = net.forward_views(x, keeps)
    zero_filled = x * keeps[0].view(2, 4, 1, 1, 1)
    assert torch.allclose(full, net(x), atol=1e-6) and torch.allclose(view, net(zero_filled), atol=1e-6)
    # a sample that a view leaves with nothing: every feature zeroed, so its input does not matter
    x[1, 3] = 0
    _, view = net.forward_views(x, keeps)
    x[1, :3] = torch.randn(3, 8, 8, 8)
    assert torch.allclose(net.forward_views(x, keeps)[1][1], view[1], atol=1e-6)
    # the full view is decoded last: a hook on `final` sees its input, as after forward(x)
    tap = FeatureTap(net, final="final")
    net.forward_views(x, keeps)
    after_views = tap.final_input.clone()
    net(x)
    assert torch.equal(after_views, tap.final_input)
    tap.remove()
    with pytest.raises(ValueError, match="B x M"):
        net.forward_views(x, [torch.ones(1, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="mask_missing=True"):
        _small_net(mask_missing=False).forward_views(x, keeps)


def test_several_subset_views_share_one_encoder_pass():
    net = _small_net()
    calls = []
    net.encoders["t1"].register_forward_hook(lambda *_: calls.append(1))
    recipe = RobustTraining(full_view=True, subset_views=3, distill_weight=0.5)
    trainer = _trainer(net, recipe)
    trainer.run()
    assert len(calls) == 3  # one encoder pass per step, for the full view and the 3 subset views
    assert math.isfinite(trainer.state.robust_subset) and math.isfinite(trainer.state.robust_distill)
    with pytest.raises(ValueError, match="full_view=True"):
        RobustTraining(subset_views=2)


def test_each_epoch_logs_and_keeps_the_mean_of_each_term_across_a_resume(caplog):
    recipe = RobustTraining(full_view=True, distill_weight=0.5, feature_masking=False)
    trainer = _trainer(ToySegNet(), recipe, epochs=2)
    step = trainer._process_function  # the RobustIteration the trainer runs
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.robust_full))
    with caplog.at_level("INFO"):
        trainer.run()
    assert [h["epoch"] for h in step.history] == [1.0, 2.0]
    assert step.history[0]["robust_full"] == pytest.approx(sum(seen[:3]) / 3)
    assert step.history[1]["robust_full"] == pytest.approx(sum(seen[3:]) / 3)
    assert any(
        f"robust training, epoch 2: robust_full {step.history[1]['robust_full']:.3f}" in r.getMessage()
        for r in caplog.records
    )
    fresh = recipe.iteration(None)
    fresh.load_state_dict(step.state_dict())
    assert fresh.history == step.history  # kept across a resume


def test_per_sequence_heads_are_refused_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        net = torch.nn.parallel.DistributedDataParallel(ToySegNet())
        heads = torch.nn.ModuleDict({m: SegHead() for m in MODALITIES})
        trainer = _trainer(net, RobustTraining(sep_weight=0.5, feature_masking=False), heads)
        with pytest.raises(ValueError, match="does not support DistributedDataParallel"):
            trainer.run()
    finally:
        import ignite.distributed as idist

        idist.finalize()  # Ignite may have cached the group: reset it, as the multi-GPU tests do
        if dist.is_initialized():
            dist.destroy_process_group()


def test_the_step_drops_whole_views_of_a_multi_view_network_and_trains_its_encoders():
    torch.manual_seed(0)
    net = MultiViewNet({"a": 3, "b": 2, "c": 4}, out_features=3, mask_missing=True)
    heads = make_heads("classification", net, detach=False)
    recipe = RobustTraining(
        full_view=True, subset_views=2, distill_weight=0.5, distill="softmax_kl", sep_weight=0.5
    )
    step = recipe.iteration(heads)
    seen = []
    original = net.forward_views
    net.forward_views = lambda x, keeps: seen.append(keeps) or original(x, keeps)
    data = [{"image": torch.randn(4, 9), "label": torch.randint(0, 3, (4,))} for _ in range(3)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(trainable_parameters(net, heads), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(), iteration_update=step,
    )  # fmt: skip
    trainer.run()
    assert step.modalities == ("a", "b", "c") and step.shared_encoders
    assert len(seen) == 3 and all(len(k) == 2 and k[0].shape == (4, 3) for k in seen)
    for term in ("robust_full", "robust_subset", "robust_distill", "robust_sep"):
        assert math.isfinite(getattr(trainer.state, term)), term
    assert all(
        not torch.equal(before[k], v) for k, v in net.state_dict().items() if k.startswith("encoders.")
    )


def test_a_view_network_without_masking_gets_its_views_zero_filled_at_the_input():
    torch.manual_seed(0)
    net = MultiViewNet({"a": 3, "b": 2}, out_features=2)
    inputs = []
    net.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    recipe = RobustTraining(feature_masking=False)  # one subset view per step
    data = [{"image": torch.randn(6, 5) + 5.0, "label": torch.randint(0, 2, (6,))}]
    SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.CrossEntropyLoss(),
        iteration_update=recipe.iteration(),
    ).run()  # fmt: skip
    (x,) = inputs
    zero_a, zero_b = (x[:, :3] == 0).all(dim=1), (x[:, 3:] == 0).all(dim=1)
    # each sample keeps a non-empty subset, some drop a view; each view is zeroed whole or kept whole
    assert not (zero_a & zero_b).any() and (zero_a | zero_b).any()
    assert ((x[:, :3] == 0).any(dim=1) == zero_a).all() and ((x[:, 3:] == 0).any(dim=1) == zero_b).all()
