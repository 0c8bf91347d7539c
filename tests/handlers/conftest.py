"""A tiny multi-encoder segmentation problem and a recorder of the gradients the optimizer sees."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss
from torch import nn

from cggm_seg.networks import MultiEncoderSegNet, make_heads

SIZE = 16


class GradRecorder:
    """Keeps the gradients right after backward (before any later handler) and at optimizer.step."""

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.network = network
        self.after_backward: list[dict[str, torch.Tensor]] = []
        self.at_step: list[dict[str, torch.Tensor]] = []
        optimizer.register_step_pre_hook(lambda *_: self.at_step.append(self.grads()))

    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.network.named_parameters() if p.grad is not None}

    def on_backward(self, engine) -> None:
        self.after_backward.append(self.grads())


def batches(n: int, size: int = SIZE, batch: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Images whose tumour is visible mostly in channel 1 (t1ce), and region labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.zeros(batch, 3, size, size, size)
        label[:, :, 4:10, 5:11, 3:9] = 1.0
        label[:, 2, 6:8, 7:9, 5:7] = 1.0
        image = torch.randn(batch, 4, size, size, size, generator=g) * 0.5
        image[:, 1] += 2.0 * label[:, 2]
        image[:, 3] += 1.0 * label[:, 1]
        out.append({"image": image, "label": label})
    return out


def small_net() -> MultiEncoderSegNet:
    return MultiEncoderSegNet(channels=(8, 8, 16), blocks_down=(0, 1, 1), blocks_up=(1, 0))


@pytest.fixture
def seg_setup():
    """(network, heads, optimizer, loss) with fixed seeds."""
    torch.manual_seed(0)
    net = small_net()
    heads = make_heads("segmentation", net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    return net, heads, optimizer, loss


@pytest.fixture
def make_trainer():
    def make(net, optimizer, loss, data, epochs=1, handlers=(), **kwargs) -> SupervisedTrainer:
        return SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=epochs,
            train_data_loader=data,
            network=net,
            optimizer=optimizer,
            loss_function=loss,
            train_handlers=list(handlers),
            **kwargs,
        )

    return make


@pytest.fixture(name="make_net")
def make_net_fixture():
    return small_net


@pytest.fixture(name="GradRecorder")
def grad_recorder_cls():
    return GradRecorder


@pytest.fixture(name="batches")
def batches_fixture():
    return batches
