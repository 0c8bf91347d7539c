from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import nn

from cggm_seg.networks.depth_split import DepthSplitConv3d, use_depth_split_convs


def plain_twin(conv: nn.Conv3d) -> nn.Conv3d:
    twin = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        padding=conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    twin.load_state_dict(conv.state_dict())
    return twin


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"kernel_size": 3, "padding": 1}, (1, 4, 8, 6, 5)),
        ({"kernel_size": 3, "padding": 1}, (1, 4, 7, 6, 5)),  # odd depth: the halves overlap
        ({"kernel_size": 3, "padding": 0}, (1, 4, 9, 6, 5)),
        ({"kernel_size": (5, 3, 1), "padding": (2, 1, 0), "bias": False}, (1, 4, 6, 6, 5)),
        ({"kernel_size": 3, "padding": 1, "groups": 2}, (1, 4, 3, 4, 4)),
        ({"kernel_size": 3, "padding": 1}, (1, 4, 2, 4, 4)),  # depth_out 2: one slice per half
        ({"kernel_size": 3, "padding": 0}, (1, 4, 3, 4, 4)),  # depth_out 1: not split
        ({"kernel_size": 3, "padding": 1}, (2, 4, 8, 6, 5)),  # batch of two: not split
    ],
)
def test_same_output_and_gradients_as_conv3d(kwargs, shape):
    torch.manual_seed(0)
    split = DepthSplitConv3d(4, 6, **kwargs)
    plain = plain_twin(split)
    x = torch.randn(shape, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    y, y_plain = split(x), plain(x_plain)
    torch.testing.assert_close(y, y_plain)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_plain.backward(grad)
    torch.testing.assert_close(x.grad, x_plain.grad)
    torch.testing.assert_close(split.weight.grad, plain.weight.grad)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_takes_the_fast_kernel():
    x = torch.randn(1, 16, 16, 16, 16)
    split = DepthSplitConv3d(16, 16, 3, padding=1)

    def kernels(conv: nn.Module) -> set[str]:
        with torch.profiler.profile() as prof:
            conv(x)
        return {
            e.name
            for e in prof.events()
            if e.name in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution")
        }

    if kernels(plain_twin(split)) != {"aten::slow_conv3d_forward"}:
        pytest.skip("this PyTorch no longer runs a batch-of-one CPU conv3d on its slow kernel")
    assert kernels(split) == {"aten::mkldnn_convolution"}


@pytest.mark.parametrize(
    "kwargs", [{"stride": 2}, {"dilation": 2}, {"padding": "same"}, {"padding_mode": "reflect"}]
)
def test_rejects_what_it_cannot_split(kwargs):
    with pytest.raises(ValueError, match="needs stride 1"):
        DepthSplitConv3d(2, 2, 3, **kwargs)


def test_use_depth_split_convs_keeps_parameters_and_state_dict():
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
    assert use_depth_split_convs(net) is net

    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    for m in convs:
        eligible = m.kernel_size != (1, 1, 1) and m.stride == (1, 1, 1)
        assert isinstance(m, DepthSplitConv3d) == eligible
    assert any(isinstance(m, DepthSplitConv3d) for m in convs)
    assert all(p is params_before[n] for n, p in net.named_parameters())
    assert list(net.state_dict()) == keys_before
    x = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(net(x), plain_net(x))


def test_scriptable():
    conv = DepthSplitConv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(torch.jit.script(conv)(x), F.conv3d(x, conv.weight, conv.bias, padding=1))
