import pytest
import torch
from torch import nn

from cggm_seg.balancing.branches import FeatureTap, branch_parameters, resolve_branches

from .toy_nets import MODALITIES, ToySegNet, ToyViewNet, seg_batch, view_batch


def test_branches_resolve_by_name_object_sequence_or_model():
    model = ToySegNet()
    spec = {
        "t1": "encoders.t1",
        "t1ce": model.encoders.t1ce,
        "t2": ["encoders.t2.0"],
        "flair": "encoders.flair",
    }
    resolved = resolve_branches(model, spec)
    assert resolved["t1ce"] == [model.encoders.t1ce] and resolved["t2"] == [model.encoders.t2[0]]
    params = branch_parameters(model)  # asks model.branch_names()
    assert list(params) == list(MODALITIES)
    assert [id(p) for p in params["t1"]] == [id(p) for p in model.encoders.t1.parameters()]
    ddp_like = nn.DataParallel(model)
    assert resolve_branches(ddp_like, {"a": "encoders.t1", "b": "encoders.t2"})["a"] == [model.encoders.t1]
    # names as the wrapper lists them (named_modules() of a DDP model) work as well
    by_wrapper_name = resolve_branches(ddp_like, {"a": "module.encoders.t1", "b": "module.encoders.t2"})
    assert by_wrapper_name["a"] == [model.encoders.t1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"t1": "encoders.t9", "t2": "encoders.t2"}, "no module named 'encoders.t9'"),
        ({"t1": [], "t2": "encoders.t2"}, "names no module"),
        ({"t1": "encoders.t1.1", "t2": "encoders.t2"}, "no parameters"),
        ({"t1": "encoders", "t2": "encoders.t2"}, "overlap"),
        ({"t1": "encoders.t1", "t2": "encoders.t1.0"}, "overlap"),
        ({"t1": "encoders.t1"}, "at least two"),
        ({"t1": nn.Linear(2, 2), "t2": "encoders.t2"}, "not part of the model"),
    ],
)
def test_branch_errors_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_branches(ToySegNet(), spec)


def test_model_without_branch_names_needs_branches():
    with pytest.raises(ValueError, match="branch_names"):
        resolve_branches(ToyViewNet())


def test_tap_keeps_detached_branch_outputs_and_final_input_from_the_last_grad_forward():
    model = ToyViewNet()
    tap = FeatureTap(model, {v: f"encoders.{v}" for v in model.views}, final="final")
    x, _ = view_batch()
    model(x)
    features = tap.features
    assert set(features) == set(model.views)
    assert features["mean"].shape == (8, 6) and not features["mean"].requires_grad
    assert tap.final_input.shape == (8, 8)
    expected = model.final(tap.final_input)
    torch.testing.assert_close(expected, model(x))
    with torch.no_grad():
        model(torch.zeros_like(x))  # a validation pass does not replace the training features
    torch.testing.assert_close(tap.features["mean"], features["mean"])
    tap.clear()
    with pytest.raises(RuntimeError, match="run the model's forward first"):
        _ = tap.features
    tap.remove()
    model(x)
    assert tap.final_input is None


def test_tap_of_a_multi_module_branch_gives_a_tuple():
    model = ToySegNet()
    tap = FeatureTap(model, {"t1": ["encoders.t1.0", "encoders.t1.1"], "t2": "encoders.t2"})
    model(seg_batch()[0])
    conv, relu = tap.features["t1"]
    torch.testing.assert_close(relu, conv.relu())
