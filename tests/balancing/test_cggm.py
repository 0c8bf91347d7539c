import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.cggm import CGGM, direction_loss
from cggm_seg.balancing.head_trainer import HeadTrainer, flat_gradients
from cggm_seg.balancing.magnitude import branch_param_groups
from cggm_seg.balancing.tracker import BalanceTracker

from .toy_nets import MODALITIES, VIEWS, SegHead, ToySegNet, ToyViewNet, ViewHead, seg_batch, view_batch

seg_loss = F.binary_cross_entropy_with_logits


def _seg_setup(**kwargs):
    torch.manual_seed(0)
    model = ToySegNet()
    heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    return model, heads, CGGM(**kwargs).bind(model, trainer, loss_fn=seg_loss)


def test_cggm_grad_mode_applies_the_trackers_b():
    tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded")
    model, _, cggm = _seg_setup(direction="off", tracker=tracker)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in range(3):
        x, y = seg_batch(seed=s)
        optimizer.zero_grad()
        seg_loss(model(x), y).backward()
        cggm.observe(y)
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
    with pytest.raises(RuntimeError, match=r"call observe\(\)"):
        cggm.apply_magnitude(torch.optim.Adam(model.parameters()))
    seg_loss(model(x), y).backward()
    cggm.observe(y)
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
        seg_loss(model(x), y)
        cggm.observe(y)
        assert "cos_t1" not in cggm.stats and cggm.stats["L_gm"] == 0.0  # not before after_backward
        assert cggm.after_backward()
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
    assert cggm.observe(y) is cggm.stats  # observe returns the stats
    assert cggm.after_backward()
    assert cggm.observer.final_input is None  # nothing kept past the step
    assert cggm.stats["L_gm"] > 0
    assert model.final.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if not name.startswith("final."):
            assert p.grad is None, name
    grads = [p.grad.clone() for p in model.final.parameters()]
    assert cggm.after_backward()  # nothing pending any more: nothing is added twice
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
def test_after_backward_gives_the_one_pass_gradient(direction):
    """Adding the direction term's gradient after the backward is back-propagating loss + lam * L_gm
    in one pass; with ``scale`` both parts carry the factor (a GradScaler, accumulation)."""
    x, y = seg_batch()
    for scale in (1.0, 0.25):
        model, heads, cggm = _seg_setup(direction=direction, lam=0.5)
        expected = _one_pass_gradients(copy.deepcopy(model), copy.deepcopy(heads), x, y, 0.5, direction)
        (seg_loss(model(x), y) * scale).backward()
        cggm.observe(y)
        assert cggm.after_backward(scale)
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
    scaler.scale(seg_loss(model(x), y)).backward()
    cggm.observe(y)
    cggm.step(optimizer, scaler=scaler)  # adds 8 x the direction gradient, then the scaler unscales all
    for name in expected:
        torch.testing.assert_close(seen[0][name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_observe_without_the_final_layers_input_fails_clearly():
    model, _, cggm = _seg_setup()
    x, y = seg_batch()
    with pytest.raises(RuntimeError, match="no features captured"):
        cggm.observe(y)
    for i, m in enumerate(MODALITIES):  # the branches ran (features kept), the final layer did not
        model.encoders[m](x[:, i : i + 1])
    with pytest.raises(RuntimeError, match="final layer's input was not captured"):
        cggm.observe(y)


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
        CGGM(magnitude="scale")
    with pytest.raises(ValueError, match="direction"):
        CGGM(direction="cosine")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        CGGM(lam=-0.1)
    with pytest.raises(ValueError, match="the heads cover"):
        CGGM().bind(model, trainer, branches={"t1": "encoders.t1", "t2": "encoders.t2"}, loss_fn=seg_loss)
    with pytest.raises(ValueError, match="the tracker covers"):
        CGGM(tracker=BalanceTracker(["t1", "t2"])).bind(model, trainer, loss_fn=seg_loss)
    wide = {m: SegHead(hidden=5) for m in MODALITIES}
    trainer = HeadTrainer(wide, seg_loss, torch.optim.SGD([p for h in wide.values() for p in h.parameters()]))
    with pytest.raises(ValueError, match="must match for the direction term"):
        CGGM().bind(model, trainer, loss_fn=seg_loss)


def test_cggm_on_a_multi_view_mlp_end_to_end():
    torch.manual_seed(0)
    model = ToyViewNet()
    heads = nn.ModuleDict({v: ViewHead() for v in VIEWS})
    trainer = HeadTrainer(heads, F.cross_entropy, torch.optim.Adam(heads.parameters(), 1e-2), "accuracy")
    cggm = CGGM(magnitude="lr").bind(
        model, trainer, branches={v: f"encoders.{v}" for v in VIEWS}, loss_fn=F.cross_entropy
    )
    optimizer = torch.optim.Adam(branch_param_groups(model, cggm.observer.tap.branches, lr=1e-2))
    for s in range(5):
        x, y = view_batch(seed=s)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        cggm.observe(y)
        cggm.step(optimizer)
    assert all(torch.isfinite(torch.tensor(v)) for v in cggm.stats.values())
    assert set(cggm.state_dict()["tracker"]["modalities"]) == set(VIEWS)
    cggm.remove()


def test_state_dict_resumes_with_the_last_b(tmp_path):
    tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded")
    model, _, cggm = _seg_setup(direction="off", tracker=tracker)
    for s in range(3):
        x, y = seg_batch(seed=s)
        model(x)
        cggm.observe(y)
    assert len(set(cggm.coefficients.values())) > 1
    torch.save(cggm.state_dict(), tmp_path / "cggm.pt")
    fresh_tracker = BalanceTracker(MODALITIES, ema=0.0, tau=0.0, preset="guarded")
    _, _, fresh = _seg_setup(direction="off", tracker=fresh_tracker)
    assert fresh.coefficients is None  # no B before the first observation ...
    fresh.load_state_dict(torch.load(tmp_path / "cggm.pt", weights_only=True))
    assert fresh.coefficients == cggm.coefficients  # ... a resumed run steps with the last B at once
    assert fresh_tracker.step == 3
