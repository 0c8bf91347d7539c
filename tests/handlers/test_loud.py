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
    assert "Lower head_lr" in messages[0]


def test_finite_heads_do_not_warn(seg_setup, make_trainer, batches):
    _, heads, _, _ = seg_setup
    assert not [m for m in _run(seg_setup, make_trainer, batches, CGGMHandler(heads)) if "non-finite" in m]


def test_ogmge_noise_under_ddp_without_seed_is_an_error(seg_setup, make_trainer, batches, monkeypatch):
    import torch.distributed as dist

    net, heads, sgd, loss = seg_setup
    # the check runs when the run starts (build): seen here through a stand-in that records the call
    calls = []
    handler = OGMGEHandler(heads, seed=None)
    monkeypatch.setattr(handler, "check_distributed_seed", lambda: calls.append(1))
    handler.build(make_trainer(net, sgd, loss, batches(1)))
    assert calls == [1]
    # two ranks: noise without a seed fails, naming the fix; with a seed or without noise it passes
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(
        ValueError, match=r"needs a seed: with seed=None each of the 2 ranks adds different noise"
    ):
        OGMGEHandler(heads, seed=None).check_distributed_seed()
    OGMGEHandler(heads, seed=0).check_distributed_seed()
    OGMGEHandler(heads, seed=None, noise=False).check_distributed_seed()
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    OGMGEHandler(heads, seed=None).check_distributed_seed()  # one rank: nothing to drift apart


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
