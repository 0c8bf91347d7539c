import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import FeatureTap
from cggm_seg.balancing.heads import HeadTrainer, flat_gradients

from .toy_nets import MODALITIES, SegHead, ToySegNet, seg_batch


def _heads() -> nn.ModuleDict:
    torch.manual_seed(1)
    return nn.ModuleDict({m: SegHead() for m in MODALITIES})


def test_heads_train_on_detached_features_and_report_pre_step_gradients():
    model, heads = ToySegNet(), _heads()
    before = copy.deepcopy(heads)
    trainer = HeadTrainer(
        heads, F.binary_cross_entropy_with_logits, torch.optim.SGD(heads.parameters(), lr=0.1)
    )
    tap = FeatureTap(model)
    x, y = seg_batch()
    model(x)
    step = trainer.step(tap.features, y)
    assert all(p.grad is None for p in model.parameters())  # the encoders are only observed
    for m in MODALITIES:
        reference = before[m]
        pred = reference(tap.features[m])
        F.binary_cross_entropy_with_logits(pred, y).backward()
        torch.testing.assert_close(step.final_grads[m], flat_gradients(reference.final))
        torch.testing.assert_close(
            step.final_weights[m], torch.cat([p.reshape(-1) for p in reference.final.parameters()])
        )
        assert step.final_grads[m].shape == (3 * 6 + 3,)
        torch.testing.assert_close(step.scores[m], trainer.score_fn(pred.detach(), y))  # before the update
        assert step.losses[m].item() == pytest.approx(F.binary_cross_entropy_with_logits(pred, y).item())
        assert not torch.equal(heads[m].final.weight, reference.final.weight)  # the heads did learn


def test_head_trainer_checks_heads():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="no final layer"):
        HeadTrainer({"a": SegHead(), "b": nn.Conv3d(4, 3, 1)}, F.mse_loss, opt)
    shared = SegHead()
    with pytest.raises(ValueError, match="share parameters"):
        HeadTrainer({"a": shared, "b": shared}, F.mse_loss, opt)
    with pytest.raises(ValueError, match="unknown score"):
        HeadTrainer({"a": SegHead(), "b": SegHead()}, F.mse_loss, opt, score_fn="dice")
