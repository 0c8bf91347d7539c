from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import nn

from cggm_seg.networks.pointwise import PointwiseConv3d, use_pointwise_convs


def plain_twin(conv: nn.Conv3d) -> nn.Conv3d:
    twin = nn.Conv3d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    twin.load_state_dict(conv.state_dict())
    return twin


@pytest.mark.parametrize(
    ("bias", "shape"),
    [
        (True, (1, 4, 6, 5, 3)),
        (False, (1, 4, 6, 5, 3)),
        (True, (3, 4, 2, 4, 5)),  # a batch
        (True, (4, 6, 5, 3)),  # unbatched: nn.Conv3d's own path
    ],
)
def test_same_output_and_gradients_as_conv3d(bias, shape):
    torch.manual_seed(0)
    conv = PointwiseConv3d(4, 6, 1, bias=bias)
    plain = plain_twin(conv)
    x = torch.randn(shape, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    y, y_plain = conv(x), plain(x_plain)
    torch.testing.assert_close(y, y_plain)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_plain.backward(grad)
    torch.testing.assert_close(x.grad, x_plain.grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
    if bias:
        torch.testing.assert_close(conv.bias.grad, plain.bias.grad)


def test_non_contiguous_input_and_double_backward():
    # CGGM's direction term differentiates a gradient of the final layer (create_graph=True).
    torch.manual_seed(0)
    conv = PointwiseConv3d(4, 3, 1)
    plain = plain_twin(conv)
    x = torch.randn(1, 8, 6, 5, 4)[:, ::2]

    def grad_norm(module: nn.Module) -> torch.Tensor:
        g = torch.autograd.grad(module(x).sigmoid().square().mean(), module.weight, create_graph=True)[0]
        return torch.autograd.grad(g.square().sum(), module.weight)[0]

    torch.testing.assert_close(conv(x), plain(x))
    torch.testing.assert_close(grad_norm(conv), grad_norm(plain))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 1, "stride": 2},
        {"kernel_size": 1, "padding": 1},
        {"kernel_size": 1, "groups": 2},
    ],
)
def test_rejects_what_is_not_pointwise(kwargs):
    with pytest.raises(ValueError, match="needs kernel 1"):
        PointwiseConv3d(2, 2, **kwargs)


def test_use_pointwise_convs_keeps_parameters_and_state_dict():
    kwargs = {
        "init_filters": 4,
        "in_channels": 2,
        "norm": ("GROUP", {"num_groups": 2}),
        "blocks_down": (1, 1),
    }
    net = SegResNet(blocks_up=(1,), **kwargs)
    params_before = dict(net.named_parameters())
    keys_before = list(net.state_dict())
    plain_net = SegResNet(blocks_up=(1,), **kwargs)
    plain_net.load_state_dict(net.state_dict())
    assert use_pointwise_convs(net) is net

    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    for m in convs:
        assert isinstance(m, PointwiseConv3d) == (m.kernel_size == (1, 1, 1))
    assert any(isinstance(m, PointwiseConv3d) for m in convs)
    assert all(p is params_before[n] for n, p in net.named_parameters())
    assert list(net.state_dict()) == keys_before
    x = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(net(x), plain_net(x))


def test_scriptable():
    conv = PointwiseConv3d(2, 3, 1)
    x = torch.randn(2, 2, 4, 5, 6)
    torch.testing.assert_close(torch.jit.script(conv)(x), F.conv3d(x, conv.weight, conv.bias))


def test_output_is_not_a_view():
    # An in-place activation on a view's output would copy it in backward (autograd's CopySlices).
    y = PointwiseConv3d(2, 3, 1)(torch.randn(1, 2, 4, 4, 4, requires_grad=True))
    assert not y._is_view()
    assert type(y.relu_().grad_fn).__name__ == "ReluBackward0"


def test_falls_back_to_conv3d_where_the_private_op_is_missing(monkeypatch):
    from types import SimpleNamespace

    from cggm_seg.networks import pointwise

    # a PyTorch build without aten::_unsafe_view
    monkeypatch.setattr(pointwise, "torch", SimpleNamespace(ops=SimpleNamespace(aten=SimpleNamespace())))
    assert pointwise._has_unsafe_view() is False
    monkeypatch.undo()
    monkeypatch.setattr(pointwise, "HAS_UNSAFE_VIEW", False)
    torch.manual_seed(0)
    conv = PointwiseConv3d(4, 3, 1)
    plain = plain_twin(conv)
    x = torch.randn(1, 4, 5, 6, 7, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, ref = conv(x), plain(x2)
    torch.testing.assert_close(y, ref)
    y.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
