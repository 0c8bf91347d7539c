from __future__ import annotations

import pytest
import torch

from cggm_seg.networks import MultiViewNet


@pytest.mark.parametrize("fusion", ["concat", "sum", "mean"])
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape(capture, fusion, batch):
    net = MultiViewNet({"age_sex_bmi_bp": 4, "serum": 6}, out_features=2, hidden=8, fusion=fusion)
    y, features = capture(net, torch.randn(batch, 10))
    assert y.shape == (batch, 2)
    assert {name: f.shape for name, f in features.items()} == {
        "age_sex_bmi_bp": (batch, 8),
        "serum": (batch, 8),
    }


def test_contract_attributes():
    net = MultiViewNet([3, 5, 2], out_features=4, hidden=16)
    assert net.view_names == ("view0", "view1", "view2")
    assert net.view_dims == [3, 5, 2]
    assert net.branch_names() == {f"view{i}": f"encoders.view{i}" for i in range(3)}
    assert net.final_layer_name == "final"
    assert net.final.weight.shape == (4, 16)
    assert net.hidden == 16 and net.out_features == 4


def test_each_encoder_sees_its_own_columns():
    net = MultiViewNet({"a": 2, "b": 3})
    x = torch.randn(4, 5)
    features = {}
    net.encoders["b"].register_forward_hook(lambda _m, inputs, _o: features.__setitem__("b", inputs[0]))
    net(x)
    torch.testing.assert_close(features["b"], x[:, 2:])


def test_branch_names_partition_the_parameters(branch_partition):
    net = MultiViewNet({"v": 2, "vv": 3})
    assert branch_partition(net) == {
        "fusion.projection.0.weight",
        "fusion.projection.0.bias",
        "final.weight",
        "final.bias",
    }


def test_wrong_input_width_raises():
    net = MultiViewNet([3, 4])
    with pytest.raises(ValueError, match="B x 7"):
        net(torch.randn(2, 8))
    with pytest.raises(ValueError, match="B x 7"):
        net(torch.randn(7))


@pytest.mark.parametrize(
    ("view_dims", "fusion", "match"),
    [
        ([3, 0], "concat", "width must be >= 1"),
        ({}, "concat", "at least one"),
        ({"a.b": 2}, "concat", "without '.'"),
        ([3, 4], "max", "fusion must be one of"),
    ],
)
def test_invalid_arguments_raise(view_dims, fusion, match):
    with pytest.raises(ValueError, match=match):
        MultiViewNet(view_dims, fusion=fusion)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_torchscript_roundtrip(tmp_path, fusion):
    net = MultiViewNet({"mean": 10, "se": 10, "worst": 10}, out_features=2, fusion=fusion, dropout=0.2).eval()
    x = torch.randn(3, 30)
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    torch.testing.assert_close(torch.jit.load(tmp_path / "net.ts")(x), net(x))


# -- sequence encoders (aligned multimodal features) ---------------------------------------------


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_sequence_encoders_take_b_t_d_and_give_heads(encoder):
    from cggm_seg.networks import make_heads

    net = MultiViewNet(
        {"text": 6, "audio": 3, "vision": 5}, out_features=1, hidden=8, encoder=encoder, attention_heads=2
    )
    assert net.sequential and net.sample_shape == (1, 14)
    x = torch.randn(4, 7, 14)
    assert net(x).shape == (4, 1)
    heads = make_heads("regression", net)
    assert list(heads) == ["text", "audio", "vision"]
    features = net.encoders["audio"](x[..., 6:9])
    assert features.shape == (4, 8) and heads["audio"](features).shape == (4, 1)


def test_transformer_encoder_sees_the_order_of_the_steps():
    torch.manual_seed(0)
    net = MultiViewNet([3], out_features=1, hidden=8, encoder="transformer", attention_heads=2).eval()
    x = torch.randn(1, 5, 3)
    # mean pooling alone would be order-free; the position encoding makes the order count
    assert not torch.allclose(net(x), net(x.flip(1)))


def test_sequence_encoder_errors():
    with pytest.raises(ValueError, match="encoder must be one of"):
        MultiViewNet([3], encoder="lstm")
    with pytest.raises(ValueError, match="must divide by heads=4"):
        MultiViewNet([3], hidden=6, encoder="transformer")
    net = MultiViewNet([3, 2], encoder="gru")
    with pytest.raises(ValueError, match=r"expected input B x T x 5 .* got shape \[4, 5\]"):
        net(torch.randn(4, 5))


# -- missing views ------------------------------------------------------------------------------------
def test_present_and_keep_views_by_hand():
    net = MultiViewNet({"a": 2, "b": 1, "c": 3}, out_features=2, mask_missing=True)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # sample 0 has a and c; sample 1 has nothing, so nothing is known to be missing
    assert net.present_views(x).tolist() == [[True, False, True], [True, True, True]]
    keep = torch.tensor([[False, True, True], [True, False, False]])
    y = net.keep_views(torch.arange(1.0, 13.0).view(2, 6), keep)
    assert y.tolist() == [[0, 0, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]]
    seq = net.keep_views(torch.ones(2, 3, 6), keep)  # sequences: the same columns at every step
    assert seq[:, 1].tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"keep must be B x V = \[2, 3\]"):
        net.keep_views(x, keep[:, :2])


@pytest.mark.parametrize("encoder, shape", [("mlp", (5, 9)), ("gru", (5, 4, 9))])
def test_masked_views_equal_zero_filled_inputs_and_share_one_encoder_pass(encoder, shape):
    torch.manual_seed(0)
    net = MultiViewNet({"a": 3, "b": 2, "c": 4}, 4, encoder=encoder, mask_missing=True).eval()
    x = torch.randn(*shape)
    keeps = [torch.rand(5, 3) > 0.4 for _ in range(2)]
    for keep in keeps:
        keep[~keep.any(dim=1), 0] = True
    calls = []
    hook = net.encoders["a"].register_forward_hook(lambda *_: calls.append(1))
    full, *views = net.forward_views(x, keeps)
    hook.remove()
    assert len(calls) == 1
    torch.testing.assert_close(full, net(x))
    for keep, view in zip(keeps, views):
        torch.testing.assert_close(view, net(net.keep_views(x, keep)))
    # a masked view's features are zeroed: the same output whatever the missing view held
    other = x.clone()
    other[..., 3:5] = torch.randn_like(other[..., 3:5])
    keep = torch.tensor([[True, False, True]] * 5)
    torch.testing.assert_close(net(net.keep_views(x, keep)), net.forward_views(other, [keep])[1])
    with pytest.raises(ValueError, match="needs a network built with mask_missing=True"):
        MultiViewNet({"a": 3, "b": 2, "c": 4}, 4, encoder=encoder).forward_views(x, keeps)


def test_forward_views_zeroes_a_sample_left_with_no_view_and_takes_float_keeps():
    torch.manual_seed(0)
    net = MultiViewNet({"a": 3, "b": 2}, 4, mask_missing=True).eval()
    x = torch.randn(2, 5)
    nothing = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # float keeps; sample 0 keeps no view
    _, view = net.forward_views(x, [nothing])
    # sample 0: every feature zeroed (forward would read its all-zero input as complete)
    torch.testing.assert_close(view[0], net._predict([torch.zeros(1, 32), torch.zeros(1, 32)])[0])
    torch.testing.assert_close(view[1], net(net.keep_views(x, nothing))[1])
    with pytest.raises(ValueError, match=r"expected input B x 5"):
        net.forward_views(torch.randn(2, 6), [nothing])
