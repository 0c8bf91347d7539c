from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.utils import convert_to_torchscript

from cggm_seg.apps.brats.layouts import MODALITIES
from cggm_seg.networks import PRESETS, MultiEncoderSegNet


@pytest.fixture(scope="module")
def net() -> MultiEncoderSegNet:
    torch.manual_seed(0)
    return MultiEncoderSegNet()


@pytest.mark.parametrize("fusion", ["concat", "sum", "mean"])
@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (2, 4, 16, 16, 16)),
        ({}, (1, 4, 8, 24, 16)),
        ({"channels": (8, 16, 32), "blocks_down": (1, 1, 2), "blocks_up": (1, 1)}, (1, 4, 12, 8, 4)),
        ({"modalities": ("t1ce", "flair"), "out_channels": 2}, (1, 2, 8, 8, 8)),
    ],
)
def test_output_shape(fusion, kwargs, shape, capture):
    net = MultiEncoderSegNet(fusion=fusion, **kwargs)
    y, features = capture(net, torch.randn(shape))
    assert y.shape == (shape[0], net.out_channels, *shape[2:])
    assert list(features) == list(net.modalities)
    for maps in features.values():
        assert [f.shape[1] for f in maps] == list(net.feature_channels)
        for f, stride in zip(maps, net.feature_strides):
            assert f.shape == (shape[0], f.shape[1], *(s // stride for s in shape[2:]))


def test_contract_attributes(net):
    assert net.modalities == MODALITIES
    assert net.final_layer_name == "final"
    assert isinstance(net.final, torch.nn.Conv3d)
    assert net.final.weight.shape == (3, net.final_channels, 1, 1, 1)
    assert net.feature_channels == (8, 16, 32, 64)
    assert net.feature_strides == (1, 2, 4, 8)
    assert net.branch_names() == {m: f"encoders.{m}" for m in MODALITIES}


def test_branch_names_partition_the_parameters(net, branch_partition):
    # "encoders.t1" is also the start of "encoders.t1ce...": matched with the dot they stay apart.
    fusion = branch_partition(net)
    assert {"final.weight", "final.bias", "fusions.0.projection.weight"} <= fusion
    assert any(n.startswith("up_layers.") for n in fusion)


def test_captured_features_are_not_modified_in_place(net, capture):
    """The balancing code keeps the hooked encoder outputs (detached, sharing memory): the rest of
    the forward and backward must leave them untouched."""
    net.train()
    snapshot = {}
    hooks = [
        enc.register_forward_hook(
            lambda _m, _i, out, name=name: snapshot.__setitem__(name, [f.clone() for f in out])
        )
        for name, enc in net.encoders.items()
    ]
    try:
        y, features = capture(net, torch.randn(1, 4, 16, 16, 16))
    finally:
        for hook in hooks:
            hook.remove()
    y.square().mean().backward()
    for name, maps in features.items():
        for live, copy in zip(maps, snapshot[name]):
            torch.testing.assert_close(live, copy, rtol=0, atol=0)
    net.zero_grad()


@pytest.mark.parametrize("shape", [(1, 4, 16, 16, 12), (1, 4, 4, 16, 16)])
def test_spatial_size_not_divisible_raises(net, shape):
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(shape))


def test_wrong_number_of_modalities_raises(net):
    with pytest.raises(ValueError, match="B x 4 x D x H x W"):
        net(torch.randn(1, 3, 16, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fusion": "max"}, "fusion must be one of"),
        ({"modalities": ("t1", "t1")}, "unique"),
        ({"modalities": ("t1.a", "t2")}, "without '.'"),
        ({"modalities": "t1"}, "sequence of names"),
        ({"blocks_down": (1, 1)}, "blocks_down needs one entry per level"),
        ({"blocks_up": (1,)}, "blocks_up needs one entry per decoder level"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiEncoderSegNet(**kwargs)


def test_presets():
    assert PRESETS["cpu_small"] == {
        "channels": (8, 16, 32, 64),
        "blocks_down": (0, 1, 1, 1),
        "blocks_up": (1, 1, 0),
    }
    small = MultiEncoderSegNet.from_preset("cpu_small")
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in MultiEncoderSegNet().parameters()
    )
    paper = MultiEncoderSegNet.from_preset("gpu_paper", fusion="sum")
    assert paper.feature_channels == (16, 32, 64, 128)
    assert paper.final.weight.shape == (3, 16, 1, 1, 1)
    with pytest.raises(ValueError, match="preset must be one of"):
        MultiEncoderSegNet.from_preset("huge")


def test_dropout_is_active_in_training_only():
    net = MultiEncoderSegNet(dropout=0.5)
    x = torch.randn(1, 4, 8, 8, 8)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_torchscript_roundtrip(net, tmp_path):
    net.eval()
    x = torch.randn(1, 4, 16, 16, 8)
    # The path MONAI's ckpt_export takes (scripting, verified against the eager model).
    convert_to_torchscript(net, tmp_path / "net.ts", verify=True, inputs=[x], rtol=1e-5, atol=1e-6)
    loaded = torch.jit.load(tmp_path / "net.ts")
    torch.testing.assert_close(loaded(x), net(x))
    with pytest.raises(torch.jit.Error, match="divisible by 8"):
        loaded(torch.randn(1, 4, 16, 16, 12))


def test_sliding_window_inference(net):
    net.eval()
    volume = torch.randn(1, 4, 16, 16, 32)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.0)
    with torch.no_grad():
        y = inferer(volume, net)
        halves = [net(volume[..., :16]), net(volume[..., 16:])]
    assert y.shape == (1, 3, 16, 16, 32)
    # Without overlap the two windows are plain forwards of the two halves.
    torch.testing.assert_close(y, torch.cat(halves, dim=-1))


def test_plain_layers_unless_cpu_fast_paths_are_chosen():
    from cggm_seg.networks.depth_split import DepthSplitConv3d
    from cggm_seg.networks.pointwise import PointwiseConv3d

    plain = MultiEncoderSegNet()
    assert all(type(m) is torch.nn.Conv3d for m in plain.modules() if isinstance(m, torch.nn.Conv3d))
    fast = MultiEncoderSegNet(cpu_fast_paths=True)
    assert any(isinstance(m, DepthSplitConv3d) for m in fast.modules())
    assert any(isinstance(m, PointwiseConv3d) for m in fast.modules())
    fast.load_state_dict(plain.state_dict())  # one checkpoint loads either way
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
