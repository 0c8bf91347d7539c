"""Another project's multi-encoder network, written here, balanced by naming its branches."""

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from torch import nn

from cggm_seg.handlers import CGGMHandler


class TwoPathNet(nn.Module):
    """Two sequences, plain Conv3d encoders in attributes of the user's choosing, 2 output classes."""

    def __init__(self) -> None:
        super().__init__()
        self.path_a = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU())
        self.path_b = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv3d(12, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv3d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mix(torch.cat([self.path_a(x[:, :1]), self.path_b(x[:, 1:])], 1)))


class UserHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(6, 6, 1)
        self.final = nn.Conv3d(6, 2, 1)  # same shape as TwoPathNet.classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(torch.relu(self.proj(features.detach())))


def test_cggm_handler_on_a_users_network():
    torch.manual_seed(0)
    net = TwoPathNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    data = []
    for _ in range(4):
        label = torch.zeros(2, 2, 8, 8, 8)
        label[:, 1, 2:6, 2:6, 2:6] = 1
        label[:, 0] = 1 - label[:, 1]
        image = torch.randn(2, 2, 8, 8, 8) * 0.3
        image[:, 0] += label[:, 1]
        data.append({"image": image, "label": label})
    handler = CGGMHandler(
        heads={"seq_a": UserHead(), "seq_b": UserHead()},
        branches={"seq_a": "path_a", "seq_b": net.path_b},  # a name or the module itself
        final="classifier",
        score="soft_dice",
        warmup=1,
        preset="guarded",  # per-iteration B: the 8 iterations here are shorter than a trend window
        ema=0.0,
        b_min=0.05,
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=DiceCELoss(softmax=True),
    )
    raw, at_step, coefficients = [], [], []
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED,
        lambda e: raw.append({n: p.grad.clone() for n, p in net.named_parameters()}),
    )
    handler.attach(trainer)  # what train_handlers=[handler] does, after the raw-gradient recorder
    optimizer.register_step_pre_hook(
        lambda *_: at_step.append({n: p.grad.clone() for n, p in net.named_parameters()})
    )
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: coefficients.append(dict(handler.method.coefficients))
    )
    added = []  # what the direction term added to the classifier's gradients (after the backward)
    names = ("classifier.weight", "classifier.bias")
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED,
        lambda e: added.append(dict(zip(names, handler.method.direction_grads))),
    )
    trainer.run()
    assert len(handler.history) == len(at_step) == 8
    assert all(set(h) >= {"B_seq_a", "B_seq_b", "cos_seq_a", "L_gm"} for h in handler.history)
    assert any(abs(c["seq_a"] - c["seq_b"]) > 1e-6 for c in coefficients), "B never differed between branches"
    for before, after, coeff, add in zip(raw, at_step, coefficients, added):
        for name, grad in before.items():
            branch = {"path_a": "seq_a", "path_b": "seq_b"}.get(name.split(".")[0])
            expected = grad * coeff[branch] if branch else grad + add.get(name, 0.0)
            torch.testing.assert_close(after[name], expected, msg=name)
