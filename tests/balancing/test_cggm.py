import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import branch_parameters
from cggm_seg.balancing.cggm import (
    CGGM,
    branch_param_groups,
    direction_loss,
    restore_learning_rates,
    scale_gradients,
    scale_learning_rates,
)
from cggm_seg.balancing.heads import HeadTrainer, flat_gradients
from cggm_seg.balancing.tracker import BalanceTracker

from .toy_nets import MODALITIES, VIEWS, SegHead, ToySegNet, ToyViewNet, ViewHead, seg_batch, view_batch

seg_loss = F.binary_cross_entropy_with_logits


def _seg_setup(**kwargs):
    torch.manual_seed(0)
    model = ToySegNet()
    heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    return model, heads, CGGM(model, trainer, seg_loss, **kwargs)


def _nets():
    torch.manual_seed(0)
    seg = ToySegNet()
    x, y = seg_batch()
    yield seg, seg.branch_names(), lambda: seg_loss(seg(x), y)
    views = ToyViewNet()
    xv, yv = view_batch()
    yield views, {v: f"encoders.{v}" for v in VIEWS}, lambda: F.cross_entropy(views(xv), yv)


@pytest.mark.parametrize("index", [0, 1], ids=["conv3d_multi_encoder", "mlp_multi_view"])
def test_grad_mode_scales_exactly_each_branch_and_nothing_else(index):
    model, branches, loss = list(_nets())[index]
    loss().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    coefficients = {m: 0.25 + 0.5 * i for i, m in enumerate(branches)}
    scale_gradients(branch_parameters(model, branches), coefficients)
    for name, p in model.named_parameters():
        owner = next((m for m in branches if name.startswith(f"encoders.{m}.")), None)
        expected = before[name] if owner is None else before[name] * coefficients[owner]
        assert torch.equal(p.grad, expected), name
    assert sum(name.startswith("encoders.") for name in before) == 2 * len(branches)  # weight + bias each


def _one_step_deltas(opt_cls, mode, coefficients, steps=1):
    """Encoder parameter change per branch after `steps` optimizer steps of the MLP net."""
    torch.manual_seed(0)
    model = ToyViewNet()
    branches = {v: f"encoders.{v}" for v in VIEWS}
    start = copy.deepcopy(model.state_dict())
    optimizer = opt_cls(branch_param_groups(model, branches, lr=1e-2))
    params = branch_parameters(model, branches)
    for s in range(steps):
        x, y = view_batch(seed=s)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        saved = []
        if mode == "grad":
            scale_gradients(params, coefficients)
        elif mode == "lr":
            saved = scale_learning_rates(optimizer, coefficients)
        optimizer.step()
        restore_learning_rates(saved)
    end = model.state_dict()
    return {
        v: torch.cat([(end[k] - start[k]).reshape(-1) for k in end if k.startswith(f"encoders.{v}.")]).norm()
        for v in VIEWS
    }, optimizer


def test_adam_ignores_grad_scaling_but_follows_lr_scaling():
    coefficients = {"mean": 0.25, "se": 0.5, "worst": 2.0}
    for steps in (1, 10):
        base, _ = _one_step_deltas(torch.optim.Adam, "none", coefficients, steps)
        grad, _ = _one_step_deltas(torch.optim.Adam, "grad", coefficients, steps)
        lr, optimizer = _one_step_deltas(torch.optim.Adam, "lr", coefficients, steps)
        for v, b in coefficients.items():
            assert (grad[v] / base[v]).item() == pytest.approx(1.0, abs=1e-3)  # grad mode: a no-op
            tolerance = 1e-4 if steps == 1 else 0.1  # after 10 steps the trajectories differ a little
            assert (lr[v] / base[v]).item() == pytest.approx(b, rel=tolerance)  # lr mode: the intended factor
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2] * 4  # restored after each step
    base, _ = _one_step_deltas(torch.optim.SGD, "none", coefficients)
    grad, _ = _one_step_deltas(torch.optim.SGD, "grad", coefficients)
    for v, b in coefficients.items():
        assert (grad[v] / base[v]).item() == pytest.approx(b, rel=1e-4)  # SGD: grad mode works


def test_branch_param_groups_tag_each_branch_and_the_rest():
    model = ToySegNet()
    groups = branch_param_groups(model, lr=1e-3, weight_decay=0.1)
    assert [g["modality"] for g in groups] == [*MODALITIES, None]
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.1 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups)
    saved = scale_learning_rates(optimizer, {"t1": 2.0, "t2": 0.5, "t1ce": 1.0, "flair": 1.0})
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 1e-3, 5e-4, 1e-3, 1e-3]
    restore_learning_rates(saved)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3] * 5


def test_cggm_grad_mode_applies_the_trackers_b():
    tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded")
    model, _, cggm = _seg_setup(direction="off", tracker=tracker)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in range(3):
        x, y = seg_batch(seed=s)
        optimizer.zero_grad()
        loss = cggm.training_loss(seg_loss(model(x), y), y)
        loss.backward()
        before = {n: p.grad.clone() for n, p in model.named_parameters()}
        cggm.apply_magnitude(optimizer)
        for name, p in model.named_parameters():
            factor = cggm.coefficients[name.split(".")[1]] if name.startswith("encoders.") else 1.0
            torch.testing.assert_close(p.grad, before[name] * factor, rtol=0, atol=0)
        optimizer.step()
    assert len(set(cggm.coefficients.values())) > 1  # a real, non-neutral B by the third step
    assert set(cggm.stats) >= {f"{k}_{m}" for k in ("eps", "d", "B", "head_loss") for m in MODALITIES}
    assert "cos_t1" not in cggm.stats and cggm.stats["L_gm"] == 0.0


def test_cggm_lr_mode_needs_branch_groups_and_restores_lrs():
    model, _, cggm = _seg_setup(magnitude="lr")
    x, y = seg_batch()
    with pytest.raises(RuntimeError, match="call training_loss"):
        cggm.apply_magnitude(torch.optim.Adam(model.parameters()))
    cggm.training_loss(seg_loss(model(x), y), y).backward()
    with pytest.raises(ValueError, match="branch_param_groups"):
        cggm.step(torch.optim.Adam(model.parameters(), lr=1e-3))
    optimizer = torch.optim.Adam(branch_param_groups(model, lr=1e-3))
    cggm.step(optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3] * 5


def _manual_cosines(model, heads, x, y, direction="gradient"):
    """cos_i from a full autograd pass through the whole model (no shortcut), with copies of the heads."""
    heads = copy.deepcopy(heads)
    features = {m: model.encoders[m](x[:, i : i + 1]).detach() for i, m in enumerate(MODALITIES)}
    final = list(model.final.parameters())
    if direction == "gradient":
        fused = torch.cat([g.reshape(-1) for g in torch.autograd.grad(seg_loss(model(x), y), final)])
    else:
        fused = torch.cat([p.detach().reshape(-1) for p in final])
    out = []
    for m in MODALITIES:
        if direction == "gradient":
            seg_loss(heads[m](features[m]), y).backward()
            reference = flat_gradients(heads[m].final)
        else:
            reference = torch.cat([p.detach().reshape(-1) for p in heads[m].final.parameters()])
        out.append(F.cosine_similarity(fused, reference, dim=0).item())
    return out


@pytest.mark.parametrize("direction", ["gradient", "weights"])
def test_direction_uses_this_steps_final_layer(direction):
    x, y = seg_batch()
    cosines = []
    for change in (False, True):
        model, heads, cggm = _seg_setup(direction=direction)
        if change:  # different final weights at this step -> a different direction term
            with torch.no_grad():
                model.final.weight.mul_(-3.0).add_(0.1)
        expected = _manual_cosines(model, heads, x, y, direction)
        cggm.training_loss(seg_loss(model(x), y), y)
        assert "cos_t1" not in cggm.stats and cggm.stats["L_gm"] == 0.0  # not before direction_backward
        assert cggm.direction_backward()
        got = [cggm.stats[f"cos_{m}"] for m in MODALITIES]
        assert got == pytest.approx(expected, abs=1e-5)
        b = torch.tensor([cggm.coefficients[m] for m in MODALITIES])
        assert cggm.stats["L_gm"] == pytest.approx(direction_loss(b, torch.tensor(got)).item(), abs=1e-6)
        cosines.append(got)
    assert all(abs(a - b) > 1e-3 for a, b in zip(*cosines))


@pytest.mark.parametrize("direction", ["gradient", "weights"])
def test_direction_loss_reaches_the_final_layer_only(direction):
    model, _, cggm = _seg_setup(direction=direction, lam=1.0)
    x, y = seg_batch()
    model(x)
    loss = torch.zeros(())
    assert cggm.training_loss(loss, y) is loss  # the loss is returned unchanged
    assert cggm.direction_backward()
    assert cggm.observer.final_input is None  # nothing kept past the step
    assert cggm.stats["L_gm"] > 0
    assert model.final.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if not name.startswith("final."):
            assert p.grad is None, name
    grads = [p.grad.clone() for p in model.final.parameters()]
    assert cggm.direction_backward()  # nothing pending any more: nothing is added twice
    assert all(torch.equal(p.grad, g) for p, g in zip(model.final.parameters(), grads))


def _one_pass_gradients(model, heads, x, y, lam, direction):
    """Every parameter's gradient of ``loss + lam * L_gm`` in one backward, with L_gm built by hand
    before the backward from the heads' step and the tracker (what CGGM adds after the backward)."""
    tracker = BalanceTracker(MODALITIES)
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    kept = {}
    hook = model.final.register_forward_hook(lambda mod, args, out: kept.update(x=args[0].detach()))
    features = {m: model.encoders[m](x[:, i : i + 1]).detach() for i, m in enumerate(MODALITIES)}
    loss = seg_loss(model(x), y)
    hook.remove()
    step = trainer.step(features, y)
    b = tracker.update(torch.tensor([float(step.scores[m]) for m in MODALITIES], dtype=torch.float64))
    final = list(model.final.parameters())
    if direction == "gradient":
        fused = torch.autograd.grad(seg_loss(model.final(kept["x"]), y), final, create_graph=True)
        references = step.final_grads
    else:
        fused, references = final, step.final_weights
    fused = torch.cat([g.reshape(-1) for g in fused])
    cosines = torch.stack([F.cosine_similarity(fused, references[m], dim=0) for m in MODALITIES])
    (loss + lam * direction_loss(b.float(), cosines)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("direction", ["gradient", "weights"])
def test_direction_backward_gives_the_one_pass_gradient(direction):
    """Adding the direction term's gradient after the backward is back-propagating loss + lam * L_gm
    in one pass; with ``scale`` both parts carry the factor (a GradScaler, accumulation)."""
    x, y = seg_batch()
    for scale in (1.0, 0.25):
        model, heads, cggm = _seg_setup(direction=direction, lam=0.5)
        expected = _one_pass_gradients(copy.deepcopy(model), copy.deepcopy(heads), x, y, 0.5, direction)
        loss = cggm.training_loss(seg_loss(model(x), y), y)
        (loss * scale).backward()
        assert cggm.direction_backward(scale)
        assert cggm.stats["L_gm"] > 0
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name] * scale, rtol=1e-5, atol=1e-7, msg=name)
        added = torch.cat([g.reshape(-1) for g in cggm.direction_grads])
        assert added.abs().sum() > 0


def test_step_adds_the_direction_gradient_once_with_the_scalers_scale():
    x, y = seg_batch()
    model, heads, cggm = _seg_setup(magnitude="off", lam=0.5)
    expected = _one_pass_gradients(copy.deepcopy(model), copy.deepcopy(heads), x, y, 0.5, "gradient")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    seen = []
    optimizer.register_step_pre_hook(
        lambda *_: seen.append({n: p.grad.clone() for n, p in model.named_parameters()})
    )
    loss = cggm.training_loss(seg_loss(model(x), y), y)
    scaler.scale(loss).backward()
    cggm.step(optimizer, scaler)  # adds 8 x the direction gradient, then the scaler unscales all
    for name in expected:
        torch.testing.assert_close(seen[0][name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_loss_without_the_final_layers_input_fails_clearly():
    model, _, cggm = _seg_setup()
    x, y = seg_batch()
    with pytest.raises(RuntimeError, match="no features captured"):
        cggm.training_loss(torch.zeros(()), y)
    for i, m in enumerate(MODALITIES):  # the branches ran (features kept), the final layer did not
        model.encoders[m](x[:, i : i + 1])
    with pytest.raises(RuntimeError, match="final layer's input was not captured"):
        cggm.training_loss(torch.zeros(()), y)


def test_direction_loss_formula():
    b = torch.tensor([0.5, 1.0, 2.0])
    cos = torch.tensor([1.0, 0.0, -0.5])
    # (|0.5| + |1| + |2| - (0.5 - 0 - 1)) / 3
    assert direction_loss(b, cos).item() == pytest.approx((3.5 + 0.5) / 3)
    assert direction_loss(b, torch.ones(3)).item() == 0.0


def test_cggm_checks_heads_and_modes():
    model = ToySegNet()
    heads = {m: SegHead() for m in MODALITIES}
    trainer = HeadTrainer(
        heads, seg_loss, torch.optim.SGD([p for h in heads.values() for p in h.parameters()])
    )
    with pytest.raises(ValueError, match="magnitude"):
        CGGM(model, trainer, seg_loss, magnitude="scale")
    with pytest.raises(ValueError, match="the heads cover"):
        CGGM(model, trainer, seg_loss, branches={"t1": "encoders.t1", "t2": "encoders.t2"})
    wide = {m: SegHead(hidden=5) for m in MODALITIES}
    trainer = HeadTrainer(wide, seg_loss, torch.optim.SGD([p for h in wide.values() for p in h.parameters()]))
    with pytest.raises(ValueError, match="must match for the direction term"):
        CGGM(model, trainer, seg_loss)


def test_cggm_on_a_multi_view_mlp_end_to_end():
    torch.manual_seed(0)
    model = ToyViewNet()
    heads = nn.ModuleDict({v: ViewHead() for v in VIEWS})
    trainer = HeadTrainer(heads, F.cross_entropy, torch.optim.Adam(heads.parameters(), 1e-2), "accuracy")
    cggm = CGGM(model, trainer, F.cross_entropy, branches={v: f"encoders.{v}" for v in VIEWS}, magnitude="lr")
    optimizer = torch.optim.Adam(branch_param_groups(model, cggm.observer.tap.branches, lr=1e-2))
    for s in range(5):
        x, y = view_batch(seed=s)
        optimizer.zero_grad()
        loss = cggm.training_loss(F.cross_entropy(model(x), y), y)
        loss.backward()
        cggm.step(optimizer)
    assert all(torch.isfinite(torch.tensor(v)) for v in cggm.stats.values())
    assert set(cggm.state_dict()["tracker"]["modalities"]) == set(VIEWS)
    cggm.remove()


def test_observe_every_trains_the_heads_and_adds_the_direction_at_every_kth_call():
    tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded", observe_every=3)
    model, heads, cggm = _seg_setup(tracker=tracker, observe_every=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained, added, coefficients = [], [], []
    for s in range(7):
        x, y = seg_batch(seed=s)
        optimizer.zero_grad()
        before = [p.clone() for p in heads.parameters()]
        assert cggm.due == (s % 3 == 0)
        cggm.training_loss(seg_loss(model(x), y), y).backward()
        trained.append(any(not torch.equal(a, b) for a, b in zip(before, heads.parameters())))
        final_before = [p.grad.clone() for p in cggm.final.parameters()]
        cggm.step(optimizer)
        added.append(any(not torch.equal(a, p.grad) for a, p in zip(final_before, cggm.final.parameters())))
        coefficients.append(dict(cggm.coefficients))
    assert trained == [True, False, False, True, False, False, True]  # calls 1, 4 and 7
    assert added == trained  # the direction term only where the heads observed
    assert coefficients[1] == coefficients[2] == coefficients[0] and coefficients[5] == coefficients[3]
    assert coefficients[3] != coefficients[0] and tracker.step == 3
    state = cggm.state_dict()
    assert state["calls"] == 7
    fresh_tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded", observe_every=3)
    _, _, fresh = _seg_setup(tracker=fresh_tracker, observe_every=3)
    fresh.load_state_dict(state)
    # a resumed run keeps the phase (next observation at call 10) and steps with the last B at once
    assert fresh.cadence.calls == 7 and not fresh.due and fresh.coefficients == coefficients[-1]


def test_observe_every_needs_a_tracker_with_the_same_spacing():
    with pytest.raises(ValueError, match=r"BalanceTracker\(\.\.\., observe_every=4\)"):
        _seg_setup(tracker=BalanceTracker(MODALITIES), observe_every=4)
    _, _, cggm = _seg_setup(observe_every=4)
    assert cggm.tracker.observe_every == 4  # the default tracker is built for it
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="observe_every must be an integer >= 1"):
            _seg_setup(observe_every=bad)
