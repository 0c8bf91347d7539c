"""What another project meets when it reuses the handlers: errors at construction, heads that say
what is wrong, losses without reduction, OGM-GE under Adam."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from torch import nn

from cggm_seg.balancing import OGMGE, HeadTrainer, branch_param_groups
from cggm_seg.handlers import CGGMHandler, HeadMonitorHandler, OGMGEHandler
from cggm_seg.networks import SegmentationHead


@pytest.mark.parametrize(
    ("handler", "kwargs", "message"),
    [
        (CGGMHandler, {"magnitude": "gradient"}, "magnitude must be one of"),
        (CGGMHandler, {"direction": "grad"}, "direction must be one of"),
        (CGGMHandler, {"lam": -0.1}, "lam must be >= 0"),
        (CGGMHandler, {"rho": 0.0}, "rho must be a positive"),
        (CGGMHandler, {"preset": "papr"}, "preset must be one of"),
        (CGGMHandler, {"score": "dice"}, "unknown score"),
        (OGMGEHandler, {"magnitude": "learning_rate"}, r"magnitude must be one of \('grad', 'lr'\)"),
        (OGMGEHandler, {"alpha": -1.0}, "alpha must be >= 0"),
        (HeadMonitorHandler, {"score": "acc"}, "unknown score"),
        (HeadMonitorHandler, {"head_lr": 0.0}, "the heads' lr must be > 0"),
    ],
)
def test_bad_settings_fail_when_the_handler_is_built(seg_setup, handler, kwargs, message):
    _, heads, _, _ = seg_setup
    with pytest.raises(ValueError, match=message):
        handler(heads, **kwargs)


def test_segmentation_head_given_one_tensor_says_what_it_expects():
    head = SegmentationHead([8, 16], hidden=8)
    with pytest.raises(
        ValueError, match=r"expects a list of 2 feature maps .* got a tensor of shape \[2, 8, 4, 4, 4\]"
    ):
        head(torch.randn(2, 8, 4, 4, 4))
    with pytest.raises(ValueError, match=r"channels \[8, 16\].*\[\[1, 8, 4, 4, 4\], \[1, 8, 2, 2, 2\]\]"):
        head([torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)])


def test_head_trainer_names_the_head_and_the_expected_size():
    heads = {m: SegmentationHead([4, 8], hidden=6) for m in ("t1", "t2")}
    params = [p for h in heads.values() for p in h.parameters()]
    trainer = HeadTrainer(heads, DiceLoss(sigmoid=True), torch.optim.SGD(params, lr=0.1))
    target = torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="head 't1': SegmentationHead expects a list"):
        trainer.step({"t1": torch.randn(1, 4, 8, 8, 8), "t2": torch.randn(1, 4, 8, 8, 8)}, target)
    maps = [torch.randn(1, 4, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)]
    half = {"t1": maps, "t2": maps}  # stride 1: a 4^3 output for an 8^3 label
    with pytest.raises(
        ValueError, match=r"head 't1' predicts \[1, 3, 4, 4, 4\] for a target of \[1, 3, 8, 8, 8\]"
    ):
        trainer.step(half, target)


def test_direction_term_and_heads_reduce_a_loss_without_reduction(seg_setup, make_trainer, batches):
    net, heads, optimizer, _ = seg_setup
    loss = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")
    handler = CGGMHandler(heads, preset="guarded", tau=0.0)
    trainer = make_trainer(net, optimizer, loss, batches(2), handlers=[handler])
    trainer.run()
    assert len(handler.history) == 2
    assert all(torch.isfinite(torch.tensor(h["L_gm"])) for h in handler.history)
    assert "cos_t1" in handler.history[-1]


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(3, 4)})
        self.final = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.encoders["a"](x[:, :3]), self.encoders["b"](x[:, 3:])], 1))


class VectorHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.final = nn.Linear(8, 2)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.final(self.fc(f.detach()))


def _two_branch_ogm(**kwargs) -> tuple[TwoBranch, dict[str, str], OGMGE]:
    """A seeded two-branch MLP, its heads and OGM-GE with ``kwargs``."""
    torch.manual_seed(0)
    model = TwoBranch()
    heads = {"a": VectorHead(), "b": VectorHead()}
    params = [p for h in heads.values() for p in h.parameters()]
    trainer = HeadTrainer(heads, nn.functional.cross_entropy, torch.optim.SGD(params, lr=0.1), "accuracy")
    branches = {"a": "encoders.a", "b": "encoders.b"}
    return model, branches, OGMGE(**kwargs).bind(model, trainer, branches=branches)


def _ogm_update(magnitude: str, k_a: float) -> dict[str, float]:
    """Norm of one Adam step's update of each branch, with the OGM-GE coefficient of branch a forced."""
    model, branches, ogm = _two_branch_ogm(noise=False, magnitude=magnitude)
    if magnitude == "lr":
        optimizer = torch.optim.Adam(branch_param_groups(model, branches, lr=0.01))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    flat = {
        m: lambda m=m: torch.cat([p.detach().reshape(-1) for p in model.encoders[m].parameters()])
        for m in "ab"
    }
    before = {m: flat[m]().clone() for m in "ab"}
    loss = nn.functional.cross_entropy(model(x), y)
    ogm.observe(y)
    ogm.k = torch.tensor([k_a, 1.0], dtype=torch.float64)  # branch a dominant
    loss.backward()
    if magnitude == "grad":  # Adam normalises the scaled gradient away, and says so
        with pytest.warns(UserWarning, match="magnitude='lr'"):
            ogm.step(optimizer, epoch=0)
    else:
        ogm.step(optimizer, epoch=0)
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)  # restored after the step
    return {m: float((flat[m]() - before[m]).norm()) for m in "ab"}


def test_ogmge_lr_mode_scales_the_update_by_k_under_adam():
    reference = _ogm_update("lr", 1.0)
    scaled = _ogm_update("lr", 0.28)
    assert scaled["a"] / reference["a"] == pytest.approx(0.28, rel=1e-4)  # Adam's eps: not exact
    assert scaled["b"] / reference["b"] == pytest.approx(1.0, rel=1e-6)
    # grad mode under Adam: the coefficient barely changes the update (Adam is scale invariant)
    assert _ogm_update("grad", 0.28)["a"] / _ogm_update("grad", 1.0)["a"] == pytest.approx(1.0, rel=0.05)


def test_ogmge_lr_mode_refuses_to_scale_twice():
    model, branches, ogm = _two_branch_ogm(magnitude="lr", end_epoch=None)
    optimizer = torch.optim.Adam(branch_param_groups(model, branches, lr=0.01))
    ogm.apply_magnitude(optimizer, 0)
    with pytest.raises(RuntimeError, match="already scaled"):
        ogm.apply_magnitude(optimizer, 0)
    ogm.restore_magnitude()
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)


def test_lr_magnitude_without_branch_groups_is_refused_on_attach(seg_setup, make_trainer, batches):
    """A trainer built before the handler is attached: its optimizer is checked there, before any
    run; one built with branch_param_groups passes."""
    net, heads, optimizer, loss = seg_setup  # optimizer: SGD over net.parameters(), one group
    trainer = make_trainer(net, optimizer, loss, batches(1))
    with pytest.raises(ValueError, match="branch_param_groups"):
        CGGMHandler(heads, magnitude="lr").attach(trainer)
    grouped = torch.optim.SGD(branch_param_groups(net, None, lr=0.01))
    CGGMHandler(heads, magnitude="lr").attach(make_trainer(net, grouped, loss, batches(1)))
