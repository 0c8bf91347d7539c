"""HeadObserver: the one tap -> heads -> scores sequence, and hooks that come off cleanly."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from torch import nn

from cggm_seg.balancing import HeadTrainer
from cggm_seg.balancing.observer import HeadObserver
from tests.balancing.toy_nets import MODALITIES, SegHead, ToySegNet


def forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _trainer() -> tuple[ToySegNet, HeadTrainer]:
    torch.manual_seed(0)
    net = ToySegNet()
    heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
    loss = DiceLoss(sigmoid=True)
    return net, HeadTrainer(heads, loss, torch.optim.SGD(heads.parameters(), lr=0.1))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 4, 6, 6, 6)
    y = (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    return x, y


def test_observe_trains_the_heads_and_returns_scores_in_branch_order():
    net, trainer = _trainer()
    x, y = _batch()
    before = {m: trainer.heads[m].final.weight.detach().clone() for m in MODALITIES}
    with HeadObserver(net, trainer) as observer:
        net(x)
        seen = observer.observe(y)
        assert seen.scores.shape == (4,) and seen.scores.dtype == torch.float64
        assert torch.equal(
            seen.scores, torch.tensor([float(seen.step.scores[m]) for m in MODALITIES], dtype=torch.float64)
        )
        assert set(seen.stats) == {f"head_loss_{m}" for m in MODALITIES}
        for m in MODALITIES:
            assert not torch.equal(trainer.heads[m].final.weight, before[m])
        with pytest.raises(RuntimeError, match="no features captured"):
            observer.observe(y)  # the tap was cleared: no stale features are reused


def test_no_hook_remains_after_remove_or_the_context():
    net, trainer = _trainer()
    assert forward_hooks(net) == 0
    observer = HeadObserver(net, trainer, final="final")
    assert forward_hooks(net) == len(MODALITIES) + 1
    observer.remove()
    assert forward_hooks(net) == 0
    with HeadObserver(net, trainer):
        assert forward_hooks(net) == len(MODALITIES)
    assert forward_hooks(net) == 0


def test_predict_only_observer_keeps_no_grad_forwards_and_refuses_to_train():
    net, trainer = _trainer()
    x, y = _batch()
    with HeadObserver(net, dict(trainer.heads), keep_without_grad=True) as observer, torch.no_grad():
        net(x)
        logits = observer.predict()
        assert set(logits) == set(MODALITIES) and logits["t1"].shape == (2, 3, 6, 6, 6)
        with pytest.raises(RuntimeError, match="only predicts"):
            observer.observe(y)


def test_heads_of_other_modalities_are_refused_and_leave_no_hook():
    net, trainer = _trainer()
    with pytest.raises(ValueError, match="the heads cover"):
        HeadObserver(net, {"t1": trainer.heads["t1"], "t2": trainer.heads["t2"]})
    assert forward_hooks(net) == 0
