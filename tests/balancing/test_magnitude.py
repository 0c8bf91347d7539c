"""How a method changes a branch's step (cggm_seg/balancing/magnitude.py): the helpers, the
optimizer check of BranchMagnitude, and that check as the methods run it in a plain loop."""

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cggm_seg.balancing.cggm as cggm_module
from cggm_seg.balancing import magnitude
from cggm_seg.balancing.branches import branch_parameters
from cggm_seg.balancing.cggm import CGGM
from cggm_seg.balancing.magnitude import (
    ADAPTIVE_OPTIMIZERS,
    BranchMagnitude,
    branch_param_groups,
    check_branch_groups,
    restore_learning_rates,
    scale_gradients,
    scale_learning_rates,
)
from cggm_seg.balancing.ogmge import OGMGE

from .toy_nets import MODALITIES, VIEWS, SegHead, ToySegNet, ToyViewNet, seg_batch, view_batch

seg_loss = F.binary_cross_entropy_with_logits


def _nets():
    torch.manual_seed(0)
    seg = ToySegNet()
    x, y = seg_batch()
    yield seg, seg.branch_names(), lambda: seg_loss(seg(x), y)
    views = ToyViewNet()
    xv, yv = view_batch()
    yield views, {v: f"encoders.{v}" for v in VIEWS}, lambda: F.cross_entropy(views(xv), yv)


@pytest.mark.parametrize("index", [0, 1], ids=["conv3d_multi_encoder", "mlp_multi_view"])
def test_grad_mode_scales_exactly_each_branch_and_nothing_else(index):
    model, branches, loss = list(_nets())[index]
    loss().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    coefficients = {m: 0.25 + 0.5 * i for i, m in enumerate(branches)}
    scale_gradients(branch_parameters(model, branches), coefficients)
    for name, p in model.named_parameters():
        owner = next((m for m in branches if name.startswith(f"encoders.{m}.")), None)
        expected = before[name] if owner is None else before[name] * coefficients[owner]
        assert torch.equal(p.grad, expected), name
    assert sum(name.startswith("encoders.") for name in before) == 2 * len(branches)  # weight + bias each


def _one_step_deltas(opt_cls, mode, coefficients, steps=1):
    """Encoder parameter change per branch after `steps` optimizer steps of the MLP net."""
    torch.manual_seed(0)
    model = ToyViewNet()
    branches = {v: f"encoders.{v}" for v in VIEWS}
    start = copy.deepcopy(model.state_dict())
    optimizer = opt_cls(branch_param_groups(model, branches, lr=1e-2))
    params = branch_parameters(model, branches)
    for s in range(steps):
        x, y = view_batch(seed=s)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        saved = []
        if mode == "grad":
            scale_gradients(params, coefficients)
        elif mode == "lr":
            saved = scale_learning_rates(optimizer, coefficients)
        optimizer.step()
        restore_learning_rates(saved)
    end = model.state_dict()
    return {
        v: torch.cat([(end[k] - start[k]).reshape(-1) for k in end if k.startswith(f"encoders.{v}.")]).norm()
        for v in VIEWS
    }, optimizer


def test_adam_ignores_grad_scaling_but_follows_lr_scaling():
    coefficients = {"mean": 0.25, "se": 0.5, "worst": 2.0}
    for steps in (1, 10):
        base, _ = _one_step_deltas(torch.optim.Adam, "none", coefficients, steps)
        grad, _ = _one_step_deltas(torch.optim.Adam, "grad", coefficients, steps)
        lr, optimizer = _one_step_deltas(torch.optim.Adam, "lr", coefficients, steps)
        for v, b in coefficients.items():
            assert (grad[v] / base[v]).item() == pytest.approx(1.0, abs=1e-3)  # grad mode: a no-op
            tolerance = 1e-4 if steps == 1 else 0.1  # after 10 steps the trajectories differ a little
            assert (lr[v] / base[v]).item() == pytest.approx(b, rel=tolerance)  # lr mode: the intended factor
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2] * 4  # restored after each step
    base, _ = _one_step_deltas(torch.optim.SGD, "none", coefficients)
    grad, _ = _one_step_deltas(torch.optim.SGD, "grad", coefficients)
    for v, b in coefficients.items():
        assert (grad[v] / base[v]).item() == pytest.approx(b, rel=1e-4)  # SGD: grad mode works


def test_branch_param_groups_tag_each_branch_and_the_rest():
    model = ToySegNet()
    groups = branch_param_groups(model, lr=1e-3, weight_decay=0.1)
    assert [g["modality"] for g in groups] == [*MODALITIES, None]
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.1 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups)
    saved = scale_learning_rates(optimizer, {"t1": 2.0, "t2": 0.5, "t1ce": 1.0, "flair": 1.0})
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 1e-3, 5e-4, 1e-3, 1e-3]
    restore_learning_rates(saved)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3] * 5


def test_cggm_module_still_exports_the_magnitude_helpers():
    for name in (
        "MAGNITUDES",
        "branch_param_groups",
        "check_branch_groups",
        "optimizer_step",
        "restore_learning_rates",
        "scale_gradients",
        "scale_learning_rates",
    ):
        assert getattr(cggm_module, name) is getattr(magnitude, name), name
    assert magnitude.MAGNITUDES == ("grad", "lr", "off")
    assert torch.optim.Adam in ADAPTIVE_OPTIMIZERS and torch.optim.AdamW in ADAPTIVE_OPTIMIZERS
    assert torch.optim.SGD not in ADAPTIVE_OPTIMIZERS


def test_check_branch_groups_names_the_misplaced_parameter():
    model = ToySegNet()
    params = branch_parameters(model)
    check_branch_groups(torch.optim.SGD(branch_param_groups(model, lr=0.1)), params)
    groups = branch_param_groups(model, lr=0.1)
    groups[0]["params"] = groups[0]["params"] + groups[1]["params"]  # t1's group also holds t1ce's
    del groups[1]
    with pytest.raises(ValueError, match=r"param group 0 \(modality 't1'\) holds a parameter of 't1ce'"):
        check_branch_groups(torch.optim.SGD(groups, lr=0.1), params)
    with pytest.raises(ValueError, match=r"param group 0 \(modality None\) holds a parameter of 't1'"):
        check_branch_groups(torch.optim.SGD(model.parameters(), lr=0.1), params)
    only_t1 = torch.optim.SGD([{"params": params["t1"], "modality": "t1"}], lr=0.1)
    with pytest.raises(ValueError, match=r"branches \['t1ce', 't2', 'flair'\] have trainable parameters"):
        check_branch_groups(only_t1, params)


def _bound_magnitude(mode):
    model = ToySegNet()
    branch_magnitude = BranchMagnitude(mode, owner="Toy")
    branch_magnitude.bind(branch_parameters(model))
    return model, branch_magnitude


def test_grad_mode_with_an_adaptive_optimizer_warns_once_per_optimizer(caplog):
    model, grad = _bound_magnitude("grad")
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    logger = logging.getLogger("test_magnitude")
    with pytest.warns(UserWarning, match=r"Toy: magnitude='grad' .* Adam .* Use magnitude='lr'"):
        grad.check(adam, logger)
    assert "a silent no-op" in caplog.text  # the handlers' logger gets the same message
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad.check(adam)  # the same optimizer: checked once
        grad.check(sgd)  # SGD follows the gradient's scale
        grad.check(None)
        _, off = _bound_magnitude("off")
        off.check(adam)
    with pytest.warns(UserWarning, match="AdamW"):
        grad.check(torch.optim.AdamW(model.parameters(), lr=1e-3))  # another optimizer: checked again


def test_lr_mode_needs_an_optimizer_with_branch_groups():
    model, lr = _bound_magnitude("lr")
    with pytest.raises(ValueError, match="pass the optimizer"):
        lr.check(None)
    with pytest.raises(ValueError, match=r"branch_param_groups\(model, branches, lr=\.\.\.\)"):
        lr.check(torch.optim.Adam(model.parameters(), lr=1e-3))
    optimizer = torch.optim.Adam(branch_param_groups(model, lr=1e-3))
    lr.scale_learning_rates(optimizer, {"t1": 2.0, "t1ce": 0.5, "t2": 1.0, "flair": 0.25})
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 5e-4, 1e-3, 2.5e-4, 1e-3]
    with pytest.raises(RuntimeError, match="already scaled"):
        lr.scale_learning_rates(optimizer, {m: 1.0 for m in MODALITIES})
    lr.restore()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3] * 5
    lr.restore()  # nothing left to restore: nothing changes
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3] * 5
    with pytest.raises(ValueError, match="magnitude must be one of"):
        BranchMagnitude("scale")


def _bound(cls, **settings):
    torch.manual_seed(0)
    model = ToySegNet()
    heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
    return model, cls(**settings).bind(model, heads, loss_fn=seg_loss)


@pytest.mark.parametrize("cls", [CGGM, OGMGE])
def test_grad_mode_with_adam_warns_in_a_plain_loop(cls):
    """method.step(adam) with magnitude='grad' (the default) warns: Adam divides each step by a
    running gradient scale, so scaling the gradients would be a silent no-op."""
    model, method = _bound(cls)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    for s in range(2):
        x, y = seg_batch(seed=s)
        adam.zero_grad()
        seg_loss(model(x), y).backward()
        method.observe(y)
        if s == 0:
            with pytest.warns(UserWarning, match="magnitude='lr'"):
                method.step(adam)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                method.step(adam)  # once per optimizer


@pytest.mark.parametrize("cls", [CGGM, OGMGE])
def test_check_optimizer_in_lr_mode_refuses_an_optimizer_without_branch_groups(cls):
    model, method = _bound(cls, magnitude="lr")
    with pytest.raises(ValueError, match="branch_param_groups"):
        method.check_optimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    with pytest.raises(ValueError, match="pass the optimizer"):
        method.check_optimizer(None)
    method.check_optimizer(torch.optim.Adam(branch_param_groups(model, lr=1e-3)))


@pytest.mark.parametrize("cls", [CGGM, OGMGE])
def test_check_optimizer_in_grad_mode_warns_for_adam_and_logs(cls, caplog):
    model, method = _bound(cls)
    with pytest.warns(UserWarning, match=f"{cls.__name__}: magnitude='grad'"):
        method.check_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), logging.getLogger("check"))
    assert "magnitude='lr'" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.check_optimizer(None)  # nothing to check without an optimizer in grad mode


def test_ogmge_lr_mode_scales_the_branch_learning_rates_for_the_step_only():
    """OGM-GE magnitude='lr' without noise: theta <- theta - lr * k_m * g for branch m, the rest at lr."""
    model, ogm = _bound(OGMGE, magnitude="lr", noise=False)
    optimizer = torch.optim.SGD(branch_param_groups(model, lr=0.1))
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append([g["lr"] for g in optimizer.param_groups]))
    x, y = seg_batch()
    seg_loss(model(x), y).backward()
    ogm.observe(y)
    ogm.k = torch.tensor([0.3, 1.0, 0.6, 1.0], dtype=torch.float64)  # t1, t1ce, t2, flair
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ogm.step(optimizer, epoch=0)
    assert seen[0] == pytest.approx([0.03, 0.1, 0.06, 0.1, 0.1])  # the branches' groups, then the rest
    assert [g["lr"] for g in optimizer.param_groups] == [0.1] * 5  # restored after the step
    for name, p in model.named_parameters():
        owner = name.split(".")[1] if name.startswith("encoders.") else None
        lr = 0.1 * (1.0 if owner is None else [0.3, 1.0, 0.6, 1.0][MODALITIES.index(owner)])
        torch.testing.assert_close(p.detach(), before[name] - lr * grads[name], msg=name)
    ogm.step(optimizer, epoch=50)  # outside the window [0, 50): nothing scaled
    assert seen[1] == [0.1] * 5
