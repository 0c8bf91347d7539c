"""Softmax segmentation (a background channel and integer labels) through the same handlers."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss

from cggm_seg.balancing import get_score, softmax_dice_score, softmax_true_class_probability
from cggm_seg.handlers import CGGMHandler, OGMGEHandler
from cggm_seg.networks import MultiEncoderSegNet, make_heads

LN3 = math.log(3.0)


def test_softmax_scores_against_hand_computed_values():
    # two voxels; foreground probabilities 3/4 and 1/4; labels 1 and 0
    logits = torch.tensor([[[0.0, 0.0], [LN3, -LN3]]])  # B x C x N = 1 x 2 x 2
    label = torch.tensor([[[1, 0]]])  # B x 1 x N
    # foreground Dice: 2 * 0.75 / (1.0 + 1) = 0.75; with background: (0.75 + 0.75) / 2
    assert float(softmax_dice_score(logits, label)) == pytest.approx(0.75, abs=1e-5)
    assert float(softmax_dice_score(logits, label, include_background=True)) == pytest.approx(0.75, abs=1e-5)
    assert float(get_score("softmax_hard_dice")(logits, label)) == pytest.approx(1.0)  # argmax is right
    assert float(softmax_true_class_probability(logits, label)) == pytest.approx(0.75)
    one_hot = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert float(softmax_dice_score(logits, one_hot)) == pytest.approx(0.75, abs=1e-5)


def test_softmax_scores_reject_labels_they_cannot_read():
    logits = torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        softmax_dice_score(logits, torch.full((1, 1, 4, 4, 4), 3))
    with pytest.raises(ValueError, match="B x 1 x \\*spatial or one-hot"):
        softmax_dice_score(logits, torch.zeros(1, 2, 4, 4, 4))


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        label = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
        label[:, :, 4:10, 5:11, 3:9] = 2
        label[:, :, 6:8, 7:9, 5:7] = 3
        label[:, :, 2:4, 2:4, 2:4] = 1
        image = torch.randn(2, 4, 16, 16, 16, generator=g) * 0.5 + label.float()
        out.append({"image": image, "label": label})
    return out


@pytest.mark.parametrize(
    ("handler_cls", "score", "stat"),
    [(CGGMHandler, "softmax_dice", "eps_t1"), (OGMGEHandler, "softmax_true_class_probability", "s_t1")],
)
def test_softmax_network_with_integer_labels_end_to_end(handler_cls, score, stat):
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = MultiEncoderSegNet(out_channels=4, channels=(8, 8, 16), blocks_down=(0, 1, 1), blocks_up=(1, 0))
    heads = make_heads("segmentation", net)  # final layers of 4 classes, like the network's
    extra = {"preset": "guarded", "tau": 0.0} if handler_cls is CGGMHandler else {"end_epoch": None}
    handler = handler_cls(heads, score=score, **extra)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=_batches(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[handler],
    )
    trainer.run()
    assert len(handler.history) == 6
    values = [h[stat] for h in handler.history]
    assert all(0.0 <= v <= 1.0 for v in values)
    if handler_cls is CGGMHandler:
        assert all(math.isfinite(h["L_gm"]) for h in handler.history)
