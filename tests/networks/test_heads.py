from __future__ import annotations

import pytest
import torch

from cggm_seg.networks import (
    ClassificationHead,
    MultiEncoderSegNet,
    MultiViewNet,
    RegressionHead,
    SegmentationHead,
    make_heads,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def seg_net() -> MultiEncoderSegNet:
    torch.manual_seed(0)
    return MultiEncoderSegNet()


@pytest.mark.parametrize("preset", ["cpu_small", "gpu_paper"])
def test_segmentation_heads_match_the_net(preset):
    net = MultiEncoderSegNet.from_preset(preset)
    heads = make_heads("segmentation", net)
    assert list(heads) == list(net.encoders)
    for head in heads.values():
        assert isinstance(head, SegmentationHead)
        assert head.final.weight.shape == net.final.weight.shape
        assert head.final.bias.shape == net.final.bias.shape
        # light: a few thousand parameters, well under 5 % of the network
        assert n_params(head) < 0.05 * n_params(net)
        assert n_params(head) < 10_000


@pytest.mark.parametrize("shape", [(2, 4, 16, 16, 16), (1, 4, 8, 16, 24)])
def test_segmentation_head_output_matches_net_output(seg_net, capture, shape):
    heads = make_heads("segmentation", seg_net, level=0)
    y, features = capture(seg_net, torch.randn(shape))
    for name, head in heads.items():
        assert head(features[name]).shape == y.shape
        assert head(tuple(features[name])).shape == y.shape


@pytest.mark.parametrize("shape", [(2, 4, 16, 16, 16), (1, 4, 8, 16, 24)])
def test_default_segmentation_heads_predict_at_half_resolution(seg_net, capture, shape):
    from cggm_seg.networks import DEFAULT_LEVEL

    heads = make_heads("segmentation", seg_net)
    y, features = capture(seg_net, torch.randn(shape))
    half = (*y.shape[:2], *(s // 2 for s in y.shape[2:]))
    for name, head in heads.items():
        assert head.level == DEFAULT_LEVEL == 1
        assert head.final.weight.shape == seg_net.final.weight.shape  # still like the fused final layer
        assert [p.in_channels for p in head.projections] == list(seg_net.feature_channels[1:])
        assert head(features[name]).shape == half
        # an explicit size (test-time prediction): the logits upsampled to it
        assert head(features[name], list(y.shape[2:])).shape == y.shape


def test_coarse_head_ignores_the_finer_maps_and_upsamples_its_logits():
    torch.manual_seed(0)
    head = SegmentationHead((4, 8, 16), hidden=5, out_channels=2, level=1)
    assert [p.in_channels for p in head.projections] == [8, 16]
    features = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4), torch.randn(1, 16, 2, 2, 2)]
    coarse = head(features)
    assert coarse.shape == (1, 2, 4, 4, 4)
    changed = [torch.randn_like(features[0]), *features[1:]]  # the finest map is not used
    assert torch.equal(head(changed), coarse)
    full = head(features, [8, 8, 8])
    expected = torch.nn.functional.interpolate(coarse, size=[8, 8, 8], mode="trilinear", align_corners=False)
    torch.testing.assert_close(full, expected)
    for bad in (-1, 3, 1.0):
        with pytest.raises(ValueError, match=r"level must be an integer in \[0, 2\]"):
            SegmentationHead((4, 8, 16), hidden=5, level=bad)


def test_level_is_refused_for_vector_heads():
    from cggm_seg.networks import MultiViewNet

    net = MultiViewNet({"a": 3, "b": 2}, out_features=2)
    with pytest.raises(ValueError, match="level= is an option of segmentation heads"):
        make_heads("classification", net, level=1)
    assert set(make_heads("classification", net, level=None)) == {"a", "b"}


def test_segmentation_head_spatial_size():
    head = SegmentationHead((4, 8), hidden=5, out_channels=2, stride=2)
    features = [torch.randn(1, 4, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)]
    assert head(features).shape == (1, 2, 8, 8, 8)  # inferred: finest size x its stride
    assert head(features, spatial_size=[6, 8, 10]).shape == (1, 2, 6, 8, 10)
    with pytest.raises(ValueError, match="at least one feature map"):
        SegmentationHead((), hidden=5)
    with pytest.raises(ValueError, match="interp_mode must be"):
        SegmentationHead((4,), hidden=5, interp_mode="linear")


def test_segmentation_head_loss_does_not_reach_the_encoders(seg_net, capture):
    seg_net.zero_grad()
    heads = make_heads("segmentation", seg_net)
    _, features = capture(seg_net, torch.randn(1, 4, 16, 16, 16))
    loss = sum(head(features[name]).square().mean() for name, head in heads.items())
    loss.backward()
    assert all(p.grad is None for p in seg_net.parameters())
    assert all(p.grad is not None for p in heads.parameters())


@pytest.mark.parametrize("mode", ["nearest", "trilinear"])
def test_segmentation_head_is_scriptable(seg_net, capture, mode):
    head = make_heads("segmentation", seg_net, interp_mode=mode)["t2"]
    _, features = capture(seg_net, torch.randn(1, 4, 8, 8, 8))
    scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(features["t2"]), head(features["t2"]))


@pytest.mark.parametrize(
    ("task", "head_cls", "out_features"),
    [("classification", ClassificationHead, 3), ("regression", RegressionHead, 1)],
)
def test_vector_heads_match_the_net(capture, task, head_cls, out_features):
    net = MultiViewNet({"mean": 10, "se": 10, "worst": 10}, out_features=out_features, hidden=16)
    heads = make_heads(task, net, dropout=0.1)
    assert list(heads) == ["mean", "se", "worst"]
    y, features = capture(net, torch.randn(5, 30))
    for name, head in heads.items():
        assert isinstance(head, head_cls)
        assert head.final.weight.shape == net.final.weight.shape
        assert head.final.bias.shape == net.final.bias.shape
        assert head(features[name]).shape == y.shape == (5, out_features)

    net.zero_grad()
    sum(head(features[name]).square().mean() for name, head in heads.items()).backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in heads.parameters())


def test_make_heads_rejects_a_mismatched_model(seg_net):
    with pytest.raises(ValueError, match="task must be one of"):
        make_heads("detection", seg_net)
    with pytest.raises(ValueError, match="nn.Linear 'final'"):
        make_heads("classification", seg_net)
    with pytest.raises(ValueError, match="nn.Conv3d 'final'"):
        make_heads("segmentation", MultiViewNet([3, 4]))
    with pytest.raises(ValueError, match="no nn.ModuleDict 'encoders'"):
        make_heads("regression", torch.nn.Linear(3, 1))


@pytest.mark.parametrize("mode", ["nearest", "trilinear"])
def test_segmentation_head_is_a_top_down_cascade(mode):
    torch.manual_seed(0)
    head = SegmentationHead((4, 6, 8), hidden=5, out_channels=2, interp_mode=mode)
    f = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 6, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)]

    def up(z, like):
        corners = False if mode == "trilinear" else None
        return torch.nn.functional.interpolate(z, size=like.shape[2:], mode=mode, align_corners=corners)

    p = [projection(x) for projection, x in zip(head.projections, f)]
    expected = head.final(torch.relu(p[0] + up(p[1] + up(p[2], p[1]), p[0])))
    torch.testing.assert_close(head(f), expected)
    # One scale with a stride: project, upsample to the output size, act, final.
    single = SegmentationHead((4,), hidden=5, out_channels=2, stride=2, interp_mode=mode)
    full = torch.empty(1, 1, 16, 16, 16)
    torch.testing.assert_close(single(f[:1]), single.final(torch.relu(up(single.projections[0](f[0]), full))))


@pytest.mark.parametrize("cpu_fast_paths", [False, True])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_forward_sublattice_is_the_heads_logits_there(cpu_fast_paths, level):
    """Every layer is pointwise and the upsampling nearest: the sub-lattice o + 2u of the head's
    logits (on the finest map's grid at level 0, on map `level`'s above), for each of the 8 offsets,
    with the same gradients for a loss on those voxels."""
    torch.manual_seed(0)
    head = SegmentationHead((4, 6, 8), hidden=5, out_channels=2, cpu_fast_paths=cpu_fast_paths, level=level)
    f = [torch.randn(2, 4, 16, 8, 8), torch.randn(2, 6, 8, 4, 4), torch.randn(2, 8, 4, 2, 2)]
    full = head(f)
    grid = [int(s) for s in f[level].shape[2:]]
    assert list(full.shape[2:]) == grid
    seen = torch.zeros_like(full, dtype=torch.int64)
    for offset in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
        index = (slice(None), slice(None), *(slice(o, None, 2) for o in offset))
        sub = head.forward_sublattice(f, offset)
        assert list(sub.shape) == [2, 2, *(s // 2 for s in grid)]
        torch.testing.assert_close(sub, full[index], rtol=0, atol=1e-6)
        seen[index] += 1
        head.zero_grad()
        sub.square().mean().backward()
        grads = [p.grad.clone() for p in head.parameters()]
        head.zero_grad()
        head(f)[index].square().mean().backward()
        for got, expected in zip(grads, [p.grad for p in head.parameters()]):
            torch.testing.assert_close(got, expected)
    assert seen.eq(1).all()  # the 8 sub-lattices cover every voxel once
    one_map = SegmentationHead((4,), hidden=5, out_channels=2)  # a branch of one map
    torch.testing.assert_close(
        one_map.forward_sublattice(f[:1], (1, 0, 1)), one_map(f[:1])[:, :, 1::2, 0::2, 1::2]
    )


def test_forward_sublattice_refuses_what_it_cannot_compute_exactly():
    f = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 6, 4, 4, 4)]
    head = SegmentationHead((4, 6), hidden=5)
    for bad in [(0, 0), (0, 2, 0), (0, 0, -1), (0, 0.5, 0)]:
        with pytest.raises(ValueError, match="offset must be one 0 or 1 per spatial dimension"):
            head.forward_sublattice(f, bad)
    with pytest.raises(ValueError, match="needs even sizes; the output grid's \\(map 0\\) are \\[8, 8, 7\\]"):
        SegmentationHead((4,), hidden=5).forward_sublattice([torch.randn(1, 4, 8, 8, 7)], (0, 0, 0))
    with pytest.raises(ValueError, match="the output grid's \\(map 1\\) are \\[4, 4, 3\\]"):
        SegmentationHead((4, 6), hidden=5, level=1).forward_sublattice(
            [f[0], torch.randn(1, 6, 4, 4, 3)], (0, 0, 0)
        )
    with pytest.raises(
        ValueError, match="needs map 1 at half the size of map 0 \\(\\[4, 4, 4\\]\\), got \\[2, 2, 2\\]"
    ):
        head.forward_sublattice([f[0], torch.randn(1, 6, 2, 2, 2)], (0, 0, 0))
    three = SegmentationHead((4, 6, 8), hidden=5, level=1)
    with pytest.raises(ValueError, match="needs map 2 at half the size of map 1"):
        three.forward_sublattice([*f, torch.randn(1, 8, 1, 1, 1)], (0, 0, 0))
    assert (
        head.supports_sublattice and SegmentationHead((4, 6), hidden=5, level=1, stride=2).supports_sublattice
    )
    for other in (
        SegmentationHead((4, 6), hidden=5, stride=2),
        SegmentationHead((4, 6), hidden=5, interp_mode="trilinear"),
        SegmentationHead((4, 6), hidden=5, interp_mode="trilinear", level=1),
    ):
        assert not other.supports_sublattice
        with pytest.raises(
            ValueError,
            match="forward_sublattice needs nearest-neighbour upsampling and, at level 0, stride 1",
        ):
            other.forward_sublattice(f, (0, 0, 0))
