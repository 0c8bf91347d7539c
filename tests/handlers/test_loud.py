"""Loud instead of silent: settings that would make a balancing method a no-op warn or fail, once."""

from __future__ import annotations

import warnings

import pytest
import torch

from cggm_seg.balancing import BalanceTracker
from cggm_seg.handlers import CGGMHandler, HeadMonitorHandler, OGMGEHandler


def _run(seg_setup, make_trainer, batches, handler, optimizer=None, n=2):
    net, _, sgd, loss = seg_setup
    trainer = make_trainer(net, optimizer or sgd, loss, batches(n), handlers=[handler])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("cls", [CGGMHandler, OGMGEHandler])
def test_grad_mode_with_adam_warns_once_naming_the_fix(seg_setup, make_trainer, batches, cls):
    net, heads, _, _ = seg_setup
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    messages = _run(seg_setup, make_trainer, batches, cls(heads), optimizer=adam, n=3)
    ours = [m for m in messages if "magnitude='grad'" in m]
    assert len(ours) == 1
    assert "Adam divides each step by a running gradient scale" in ours[0]
    assert "magnitude='lr'" in ours[0] and "branch_param_groups" in ours[0]


def test_no_warning_with_sgd_or_lr_mode(seg_setup, make_trainer, batches):
    net, heads, _, _ = seg_setup
    assert not [m for m in _run(seg_setup, make_trainer, batches, CGGMHandler(heads)) if "magnitude" in m]
    # direction only: nothing is scaled, so nothing to warn about under Adam
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    handler = CGGMHandler(heads, magnitude="off")
    assert not [
        m for m in _run(seg_setup, make_trainer, batches, handler, optimizer=adam) if "magnitude" in m
    ]


@pytest.mark.parametrize("cls", [CGGMHandler, HeadMonitorHandler])
def test_nan_heads_warn_once_with_the_iteration(seg_setup, make_trainer, batches, cls):
    net, heads, _, _ = seg_setup
    with torch.no_grad():
        for p in heads["t2"].parameters():
            p.fill_(float("nan"))
    messages = [m for m in _run(seg_setup, make_trainer, batches, cls(heads), n=3) if "non-finite" in m]
    assert len(messages) == 1
    assert "at iteration 1 the heads ['t2'] give non-finite weights" in messages[0]
    assert "Lower the heads' lr (now 0.001)" in messages[0]


def test_finite_heads_do_not_warn(seg_setup, make_trainer, batches):
    _, heads, _, _ = seg_setup
    assert not [m for m in _run(seg_setup, make_trainer, batches, CGGMHandler(heads)) if "non-finite" in m]


def test_ogmge_noise_under_ddp_without_seed_is_an_error(seg_setup, make_trainer, batches, monkeypatch):
    """Checked when the run starts (the method is bound): two ranks and noise without a seed fail,
    naming the fix; with a seed, without noise, or on one rank the run starts."""
    import cggm_seg.balancing.ogmge as ogmge_module

    net, heads, sgd, loss = seg_setup
    monkeypatch.setattr(ogmge_module, "world_size", lambda: 2)
    with pytest.raises(
        ValueError, match=r"needs a seed: with seed=None each of the 2 ranks adds different noise"
    ):
        OGMGEHandler(heads, seed=None).build(make_trainer(net, sgd, loss, batches(1)))
    for settings in ({"seed": 0}, {"seed": None, "noise": False}):
        handler = OGMGEHandler(heads, **settings)
        handler.build(make_trainer(net, sgd, loss, batches(1)))
        handler.method.remove()
    monkeypatch.setattr(ogmge_module, "world_size", lambda: 1)
    OGMGEHandler(heads, seed=None).build(make_trainer(net, sgd, loss, batches(1)))  # nothing to drift apart


def test_tracker_state_carries_its_settings_and_refuses_others():
    saved = BalanceTracker(["t1", "t2"], rho=1.0, window=100)
    saved.update(torch.tensor([0.2, 0.3]))
    state = saved.state_dict()
    assert state["settings"]["window"] == 100 and state["settings"]["preset"] == "trend"
    same = BalanceTracker(["t1", "t2"], rho=1.0, window=100)
    same.load_state_dict(state)
    assert same.step == 1
    with pytest.raises(ValueError, match=r"saved under other settings \(rho: saved 1.0, this tracker 1.3\)"):
        BalanceTracker(["t1", "t2"], rho=1.3, window=100).load_state_dict(state)
    with pytest.raises(ValueError, match=r"preset: saved 'trend', this tracker 'guarded'"):
        BalanceTracker(["t1", "t2"], preset="guarded").load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "settings"}  # checkpoints from before
    BalanceTracker(["t1", "t2"], rho=1.3).load_state_dict(legacy)
