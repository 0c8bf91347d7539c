"""The method interface (cggm_seg/balancing/method.py): the registry, bind, and one plain loop.

``Uniform`` is the smallest method there is: B = 1 always, so the heads observe and the network
trains as joint training does. It is registered through :func:`register_method` alone.
"""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing import (
    CGGM,
    METHODS,
    OGMGE,
    BalancingMethod,
    HeadMonitor,
    HeadOptions,
    HeadTrainer,
    get_method_class,
    get_score,
    pick_method,
    register_method,
)

from .toy_nets import MODALITIES, SegHead, ToySegNet, seg_batch

seg_loss = F.binary_cross_entropy_with_logits


class Uniform(BalancingMethod):
    """B = 1 for every branch: observes through the heads and changes nothing."""

    name = "uniform"
    stat_kinds = ("B", "head_loss")

    def _observe(self, target):
        seen = self.observer.observe(target)
        self.stats = {f"B_{m}": 1.0 for m in self.modalities}
        self.stats.update(seen.stats)


@pytest.fixture
def registry():
    """METHODS as it was, after the test (and without any "uniform" during it)."""
    saved = dict(METHODS)
    METHODS.pop("uniform", None)
    yield METHODS
    METHODS.clear()
    METHODS.update(saved)


def _heads():
    return nn.ModuleDict({m: SegHead() for m in MODALITIES})


# -- the registry ---------------------------------------------------------------------------------


def test_the_built_in_methods_are_registered_by_name():
    assert METHODS["none"] is None and get_method_class("none") is None
    assert get_method_class("cggm") is CGGM and CGGM.name == "cggm"
    assert get_method_class("ogmge") is OGMGE and OGMGE.name == "ogmge"
    assert get_method_class("joint") is HeadMonitor and HeadMonitor.state_key == "monitor"


def test_register_method_adds_a_new_method_by_its_name(registry):
    assert "uniform" not in registry
    assert register_method(Uniform) is Uniform  # usable as a class decorator
    assert registry["uniform"] is Uniform and get_method_class("uniform") is Uniform
    assert register_method(Uniform) is Uniform  # the same class again: nothing changes


def test_a_second_class_with_a_taken_name_is_refused(registry):
    register_method(Uniform)

    class Other(BalancingMethod):
        name = "uniform"

    with pytest.raises(ValueError, match="method name 'uniform' is taken by Uniform"):
        register_method(Other)
    assert registry["uniform"] is Uniform

    class NotCGGM(BalancingMethod):
        name = "cggm"

    with pytest.raises(ValueError, match="method name 'cggm' is taken by CGGM"):
        register_method(NotCGGM)
    assert registry["cggm"] is CGGM


def test_the_name_none_is_reserved(registry):
    """The name "none" (no method, no heads) is held by None: a class must not take it silently."""

    class Nothing(BalancingMethod):
        name = "none"

    with pytest.raises(ValueError, match="method name 'none' is taken"):
        register_method(Nothing)
    assert registry["none"] is None


def test_get_method_class_of_an_unknown_name_lists_the_names():
    listed = r"method must be one of \[.*'cggm', 'joint', 'mmpareto', 'none', 'ogmge'.*\], got 'cgm'"
    with pytest.raises(ValueError, match=listed):
        get_method_class("cgm")


def test_pick_method_takes_the_named_entry_of_a_methods_block():
    cggm, ogm = CGGM(), OGMGE()
    methods = {"none": None, "cggm": cggm, "ogmge": ogm}
    assert pick_method(methods, "cggm") is cggm and pick_method(methods, "ogmge") is ogm
    assert pick_method(methods, "none") is None
    with pytest.raises(ValueError, match=r"method must be one of \['cggm', 'none', 'ogmge'\], got 'joint'"):
        pick_method(methods, "joint")
    no_target = r"methods#cggm must build a BalancingMethod \(give it a _target_\), got dict"
    with pytest.raises(ValueError, match=no_target):
        pick_method({"cggm": {"lam": 0.1}}, "cggm")  # a config block without _target_


# -- a method in a plain loop ---------------------------------------------------------------------


def test_a_registered_uniform_method_trains_as_joint_training(registry):
    register_method(Uniform)
    torch.manual_seed(0)
    model, heads = ToySegNet(), _heads()
    plain = copy.deepcopy(model)
    method = get_method_class("uniform")().bind(model, heads, loss_fn=seg_loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    heads_before = [p.detach().clone() for p in heads.parameters()]
    for s in range(2):
        x, y = seg_batch(seed=s)
        for net, opt in ((model, optimizer), (plain, plain_optimizer)):
            opt.zero_grad()
            seg_loss(net(x), y).backward()
        stats = method.observe(y)
        method.step(optimizer)
        plain_optimizer.step()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), name  # B = 1: exactly joint training's steps
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, heads.parameters()))  # the heads learned
    assert method.stat_names == [f"{k}_{m}" for k in ("B", "head_loss") for m in MODALITIES]
    assert set(stats) == set(method.stat_names) and all(stats[f"B_{m}"] == 1.0 for m in MODALITIES)
    assert method.settings == {"magnitude": "off"}
    method.remove()


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_methods_bound_with_a_module_dict_of_heads_train_one_step(cls):
    torch.manual_seed(0)
    model, heads = ToySegNet(), _heads()
    method = cls(head_options=HeadOptions(lr=0.05)).bind(model, heads, loss_fn=seg_loss)
    assert isinstance(method.heads, HeadTrainer) and method.heads.heads == dict(heads.items())
    assert isinstance(method.heads.optimizer, torch.optim.Adam)
    assert method.heads.optimizer.param_groups[0]["lr"] == 0.05
    assert method.heads.score_fn is get_score(cls.default_score)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model_before = [p.detach().clone() for p in model.parameters()]
    heads_before = [p.detach().clone() for p in heads.parameters()]
    x, y = seg_batch()
    seg_loss(model(x), y).backward()
    stats = method.observe(y)
    method.step(optimizer)
    assert all(not torch.equal(a, b) for a, b in zip(heads_before, heads.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(model_before, model.parameters()))
    assert {f"head_loss_{m}" for m in MODALITIES} <= set(stats)
    assert all(math.isfinite(v) for v in stats.values())
    method.remove()


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_head_modules_without_loss_fn_fail_naming_loss_fn(cls):
    model = ToySegNet()
    method = cls()
    with pytest.raises(ValueError, match="pass loss_fn="):
        method.bind(model, _heads())
    method.bind(model, _heads(), loss_fn=seg_loss)  # a failed bind leaves the method unbound
    method.remove()


def test_cggm_direction_needs_loss_fn_even_with_a_head_trainer():
    heads = _heads()
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="CGGM's direction term re-evaluates the fused loss: pass loss_fn="):
        CGGM().bind(ToySegNet(), trainer)
    torch.manual_seed(0)
    model = ToySegNet()
    cggm = CGGM(direction="off").bind(model, trainer)  # no direction term: the trainer has its loss
    x, y = seg_batch()
    seg_loss(model(x), y).backward()
    cggm.observe(y)
    cggm.step(torch.optim.SGD(model.parameters(), lr=0.1))
    assert cggm.stats["L_gm"] == 0.0 and "cos_t1" not in cggm.stats
    kinds = ("eps", "d", "B", "head_loss")  # no cos_<m> without a direction term
    assert cggm.stat_names == [f"{k}_{m}" for k in kinds for m in MODALITIES] + ["L_gm"]


def test_old_style_construction_points_to_bind():
    model, heads = ToySegNet(), _heads()
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=r"CGGM\(.*\)\.bind\(model, heads"):
        CGGM(model, trainer, seg_loss)
    with pytest.raises(TypeError, match=r"\.bind\("):
        CGGM(model, trainer, seg_loss, lam=0.1)
    with pytest.raises(TypeError, match=r"OGMGE\(.*\)\.bind\(model, heads"):
        OGMGE(model, trainer)


@pytest.mark.parametrize(
    "build",
    [
        lambda model, trainer: CGGM(model, trainer, loss_fn=seg_loss, branches=model.branch_names()),
        lambda model, trainer: OGMGE(model, trainer, branches=model.branch_names(), alpha=0.8),
        lambda model, trainer: HeadMonitor(model, trainer),
    ],
    ids=["cggm_keywords", "ogmge_keywords", "monitor"],
)
def test_old_style_construction_with_keywords_points_to_bind(build):
    """The old calls as they were written (with branches=, loss_fn=, alpha=, ...) must name .bind(
    too, not fail on a keyword the new signature lacks."""
    model, heads = ToySegNet(), _heads()
    trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=r"\.bind\("):
        build(model, trainer)


# -- bind: once, and before anything else ---------------------------------------------------------


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_observe_before_bind_fails_naming_bind(cls):
    method = cls()
    _, y = seg_batch()
    with pytest.raises(RuntimeError, match=rf"bind the {cls.__name__} to a network first: method\.bind\("):
        method.observe(y)


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_step_before_bind_fails_naming_bind(cls):
    """A method never bound must not step the optimizer as if it balanced anything."""
    torch.manual_seed(0)
    model = ToySegNet()
    x, y = seg_batch()
    seg_loss(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="bind"):
        cls().step(torch.optim.SGD(model.parameters(), lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_binding_twice_fails(cls):
    model = ToySegNet()
    method = cls().bind(model, _heads(), loss_fn=seg_loss)
    with pytest.raises(RuntimeError, match=f"this {cls.__name__} is bound already: build one per network"):
        method.bind(model, _heads(), loss_fn=seg_loss)
    with pytest.raises(RuntimeError, match="bound already"):
        method.bind(ToySegNet(), _heads(), loss_fn=seg_loss)
    method.remove()


def test_bind_checks_heads_and_options():
    model = ToySegNet()
    with pytest.raises(ValueError, match=r"the heads cover \['t1', 't2'\], the branches"):
        HeadMonitor().bind(model, {m: SegHead() for m in ("t1", "t2")}, loss_fn=seg_loss)
    with pytest.raises(ValueError, match="heads must be a HeadTrainer or modality -> head modules"):
        HeadMonitor().bind(model, [SegHead() for _ in MODALITIES], loss_fn=seg_loss)
    with pytest.raises(ValueError, match="head_options must be a HeadOptions, got dict"):
        OGMGE(head_options={"lr": 1e-3})
    with pytest.raises(ValueError, match="head 't1' \\(SegHead\\) cannot be"):
        OGMGE(head_options=HeadOptions(sublattice=True)).bind(model, _heads(), loss_fn=seg_loss)


# -- discard and remove ---------------------------------------------------------------------------


def test_discard_drops_the_captured_features_and_the_pending_direction_term():
    torch.manual_seed(0)
    model = ToySegNet()
    cggm = CGGM(lam=1.0).bind(model, _heads(), loss_fn=seg_loss)
    x, y = seg_batch()
    model(x)
    cggm.discard()  # a skipped iteration
    with pytest.raises(RuntimeError, match="no features captured"):
        cggm.observe(y)
    model(x)
    cggm.observe(y)
    cggm.discard()
    assert cggm.after_backward()  # nothing pending: nothing added
    assert all(p.grad is None for p in model.parameters())
    cggm.remove()


@pytest.mark.parametrize("cls", [CGGM, OGMGE, HeadMonitor])
def test_remove_takes_the_hooks_off(cls):
    model = ToySegNet()
    method = cls().bind(model, _heads(), loss_fn=seg_loss)
    method.remove()
    x, y = seg_batch()
    model(x)
    with pytest.raises(RuntimeError, match="no features captured"):
        method.observe(y)


def test_the_monitor_reports_the_heads_scores_and_never_touches_the_network():
    torch.manual_seed(0)
    model = ToySegNet()
    monitor = HeadMonitor().bind(model, _heads(), loss_fn=seg_loss)
    assert monitor.settings == {"magnitude": "off"}
    assert monitor.stat_names == [f"{k}_{m}" for k in ("eps", "head_loss") for m in MODALITIES]
    x, y = seg_batch()
    seg_loss(model(x), y).backward()
    stats = monitor.observe(y)
    assert set(stats) == set(monitor.stat_names) and all(0.0 <= stats[f"eps_{m}"] <= 1.0 for m in MODALITIES)
    grads = [p.grad.clone() for p in model.parameters()]
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # magnitude 'off': no word about Adam
        monitor.check_optimizer(adam)
        assert monitor.after_backward()
        monitor.apply_magnitude(adam)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    monitor.remove()
