import logging

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver, StatsHandler
from torch import nn

from cggm_seg.balancing import branch_param_groups
from cggm_seg.handlers import CGGMHandler, OGMGEHandler
from cggm_seg.networks import make_heads

BRANCHES = ("t1", "t1ce", "t2", "flair")


def _branch_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "encoders" else None


def _assert_modulated(before, at_step, coefficients, added=None, scale=1.0):
    """Branch i's gradients at the step are B_i x the raw ones; the final layer's are the raw ones
    plus the direction term's gradient (``added``); every other gradient is untouched. ``scale``:
    what the raw and added gradients were multiplied by and the step's gradients were not (AMP)."""
    assert before.keys() == at_step.keys()
    added = added or {}
    for name, raw in before.items():
        branch = _branch_of(name)
        raw = raw + added[name] if name in added else raw
        expected = (raw * coefficients[branch] if branch else raw) / scale
        torch.testing.assert_close(at_step[name], expected, rtol=1e-5, atol=1e-8, msg=name)


def _added(handler, net):
    """name -> what the CGGM handler's direction term added to that parameter's gradient this iteration."""
    final = handler.method.final
    by_id = {id(p): g.clone() for p, g in zip(final.parameters(), handler.method.direction_grads)}
    return {n: by_id[id(p)] for n, p in net.named_parameters() if id(p) in by_id}


def _recorded_trainer(seg_setup, make_trainer, GradRecorder, batches, handler, n=3, **kwargs):
    net, heads, optimizer, loss = seg_setup
    trainer = make_trainer(net, optimizer, loss, batches(n), **kwargs)
    recorder = GradRecorder(net, optimizer)
    # registered before the CGGM handler attaches, so it sees the raw gradients
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, recorder.on_backward)
    handler.attach(trainer)
    coefficients, added = [], []
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: coefficients.append(dict(handler.method.coefficients))
    )
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: added.append(_added(handler, net)))
    recorder.added = added
    return trainer, recorder, coefficients


def test_supervised_trainer_gradients_scaled_between_backward_and_step(
    seg_setup, make_trainer, GradRecorder, batches
):
    handler = CGGMHandler(seg_setup[1], warmup=1, ema=0.0, b_min=0.05, preset="guarded")
    trainer, rec, coefficients = _recorded_trainer(seg_setup, make_trainer, GradRecorder, batches, handler)
    trainer.run()
    assert len(rec.at_step) == len(rec.after_backward) == 3
    assert any(abs(b - 1.0) > 1e-3 for c in coefficients[1:] for b in c.values()), "B never left neutral"
    assert all(g.abs().sum() > 0 for a in rec.added for g in a.values())  # the direction term acts
    for before, at_step, coeff, added in zip(rec.after_backward, rec.at_step, coefficients, rec.added):
        _assert_modulated(before, at_step, coeff, added)
    # the stats are on engine.state and in the history
    for name in handler.stat_names:
        assert isinstance(getattr(trainer.state, name), float), name
    assert [h["iteration"] for h in handler.history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(h["L_gm"])) for h in handler.history)


def _first_direction_gradient(seg_setup, make_trainer, batches, accumulation):
    """A run of 2 iterations with CGGM (direction only): what its direction term added at the
    first iteration, each iteration's task loss, and the trainer."""
    import copy

    net, heads, _, loss = (copy.deepcopy(v) for v in seg_setup)
    handler = CGGMHandler(heads, magnitude="off", lam=0.5)
    trainer = make_trainer(
        net, torch.optim.SGD(net.parameters(), lr=1e-2), loss, batches(2), accumulation_steps=accumulation
    )
    fused, added = [], []
    trainer.add_event_handler(
        IterationEvents.FORWARD_COMPLETED,
        lambda e: fused.append(float(loss(e.state.output["pred"].detach(), e.state.output["label"]))),
    )
    handler.attach(trainer)
    record = lambda e: added.append(_added(handler, net))  # noqa: E731
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, record)
    trainer.run()
    return added[0], fused, trainer


def test_direction_gradient_is_added_after_backward_scaled_as_the_loss(seg_setup, make_trainer, batches):
    """The reported loss is the task loss; the direction term's gradient is added to the final
    layer's after the backward, divided by accumulation_steps as the trainer divides the loss."""
    added = {}
    for accumulation in (1, 2):
        added[accumulation], fused, trainer = _first_direction_gradient(
            seg_setup, make_trainer, batches, accumulation
        )
        assert trainer.state.output[0]["loss"] == pytest.approx(fused[-1], rel=1e-5)  # the task loss alone
        assert trainer.state.L_gm > 0
    assert added[1].keys() == {"final.weight", "final.bias"}
    for name, g in added[1].items():
        assert g.abs().sum() > 0
        torch.testing.assert_close(added[2][name], g / 2, rtol=1e-5, atol=1e-9, msg=name)


def test_amp_gradients_are_unscaled_before_modulation(seg_setup, make_trainer, GradRecorder, batches):
    handler = CGGMHandler(seg_setup[1], warmup=1, ema=0.0, b_min=0.05, preset="guarded")
    trainer, rec, coefficients = _recorded_trainer(
        seg_setup, make_trainer, GradRecorder, batches, handler, amp=True
    )
    # Trainer.run() makes a CUDA GradScaler, disabled on a CPU: swap in an enabled CPU scaler when the
    # run starts, so that the loss is really scaled.
    scale = 2.0**10
    trainer.add_event_handler(
        Events.STARTED, lambda e: setattr(e, "scaler", torch.amp.GradScaler("cpu", init_scale=scale))
    )
    trainer.run()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == scale
    assert len(rec.at_step) == 3
    for before, at_step, coeff, added in zip(rec.after_backward, rec.at_step, coefficients, rec.added):
        _assert_modulated(before, at_step, coeff, added, scale=scale)


def test_gradient_accumulation_modulates_only_when_a_step_follows(
    seg_setup, make_trainer, GradRecorder, batches
):
    handler = CGGMHandler(seg_setup[1], warmup=1, ema=0.0, b_min=0.05, preset="guarded")
    trainer, rec, coefficients = _recorded_trainer(
        seg_setup, make_trainer, GradRecorder, batches, handler, n=4, accumulation_steps=2
    )
    trainer.run()
    assert len(rec.after_backward) == 4
    assert len(rec.at_step) == 2
    # micro-batches 2 and 4 end with a step: their accumulated gradients are modulated, by the
    # B of that micro-batch; micro-batch 1 and 3 leave their gradients alone (checked by the
    # accumulated sum being scaled exactly once).
    for step, micro in enumerate((1, 3)):
        _assert_modulated(rec.after_backward[micro], rec.at_step[step], coefficients[micro], rec.added[micro])


def test_lr_mode_scales_branch_learning_rates_for_the_step_only(seg_setup, make_trainer, batches):
    net, heads, _, loss = seg_setup
    optimizer = torch.optim.Adam(branch_param_groups(net, lr=1e-3), lr=1e-3)
    handler = CGGMHandler(heads, magnitude="lr", warmup=1, ema=0.0, b_min=0.05, preset="guarded")
    trainer = make_trainer(net, optimizer, loss, batches(3))
    seen = []
    optimizer.register_step_pre_hook(
        lambda opt, *_: seen.append({g["modality"] or "rest": g["lr"] for g in opt.param_groups})
    )
    handler.attach(trainer)
    coefficients = []
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: coefficients.append(dict(handler.method.coefficients))
    )
    trainer.run()
    for lrs, coeff in zip(seen, coefficients):
        assert lrs["rest"] == pytest.approx(1e-3)
        for m in BRANCHES:
            assert lrs[m] == pytest.approx(1e-3 * coeff[m])
    assert all(g["lr"] == pytest.approx(1e-3) for g in optimizer.param_groups)  # restored


def test_bare_ignite_engine(seg_setup, batches, GradRecorder):
    """A hand-written Ignite loop that fires MONAI's iteration events gets the same modulation."""
    net, heads, optimizer, loss = seg_setup

    def step(engine, batch):
        optimizer.zero_grad()
        engine.state.output = {"image": batch["image"], "label": batch["label"]}
        engine.state.output["pred"] = net(batch["image"])
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output["loss"] = loss(engine.state.output["pred"], batch["label"])
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.state.output["loss"].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    engine = Engine(step)
    engine.register_events(*IterationEvents, event_to_attr={})
    engine.optimizer = optimizer
    recorder = GradRecorder(net, optimizer)
    engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, recorder.on_backward)
    handler = CGGMHandler(
        heads, network=net, loss_function=loss, warmup=1, ema=0.0, b_min=0.05, preset="guarded"
    )
    handler.attach(engine)
    coefficients, added = [], []
    engine.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: coefficients.append(dict(handler.method.coefficients))
    )
    engine.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: added.append(_added(handler, net)))
    engine.run(batches(3), max_epochs=1)
    assert len(recorder.at_step) == 3
    for before, at_step, coeff, add in zip(recorder.after_backward, recorder.at_step, coefficients, added):
        _assert_modulated(before, at_step, coeff, add)


def test_bare_engine_without_network_fails_clearly():
    engine = Engine(lambda e, b: None)
    engine.register_events(*IterationEvents, event_to_attr={})
    heads = nn.ModuleDict({"a": nn.Module(), "b": nn.Module()})
    CGGMHandler(heads).attach(engine)
    with pytest.raises(ValueError, match="network="):
        engine.run([0], max_epochs=1)


def test_bad_settings_fail_at_construction(seg_setup):
    heads = seg_setup[1]
    with pytest.raises(ValueError, match="rho"):
        CGGMHandler(heads, rho=-1.0)
    with pytest.raises(ValueError, match="window"):
        OGMGEHandler(heads, start_epoch=5, end_epoch=5)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="observe_every must be an integer >= 1"):
            OGMGEHandler(heads, observe_every=bad)
    with pytest.raises(TypeError, match="observe_every"):  # CGGM observes every iteration
        CGGMHandler(heads, observe_every=2)


def test_ogmge_observe_every_keeps_k_between_observations(seg_setup, make_trainer, batches):
    net, heads, optimizer, loss = seg_setup
    handler = OGMGEHandler(heads, observe_every=2, end_epoch=None)
    trainer = make_trainer(net, optimizer, loss, batches(4))
    handler.attach(trainer)
    trainer.run()
    k = [[h[f"k_{m}"] for m in BRANCHES] for h in handler.history]
    losses = [[h[f"head_loss_{m}"] for m in BRANCHES] for h in handler.history]
    assert len(k) == 4 and k[1] == k[0] and k[3] == k[2]  # iterations 2 and 4 reuse 1's and 3's
    assert losses[2] != losses[0]  # iteration 3 observed a new batch
    assert handler.method.state_dict()["calls"] == 4


def test_state_roundtrip_through_checkpoint_files(seg_setup, make_trainer, make_net, batches, tmp_path):
    """CheckpointSaver / CheckpointLoader (weights_only=True) restore heads, their optimizer, tracker."""
    net, heads, optimizer, loss = seg_setup
    handler = CGGMHandler(heads)
    trainer = make_trainer(net, optimizer, loss, batches(2))
    handler.attach(trainer)
    CheckpointSaver(str(tmp_path), {"cggm": handler, "net": net}, save_final=True).attach(trainer)
    trainer.run()
    saved = next(tmp_path.glob("*.pt"))

    torch.manual_seed(1)
    net2 = make_net()
    heads2 = make_heads("segmentation", net2)
    handler2 = CGGMHandler(heads2)
    trainer2 = make_trainer(net2, torch.optim.SGD(net2.parameters(), lr=0.01), loss, batches(1), epochs=3)
    handler2.attach(trainer2)
    CheckpointLoader(str(saved), {"cggm": handler2, "net": net2}).attach(trainer2)
    trainer2.fire_event(Events.STARTED)
    assert handler2.history == handler.history
    torch.testing.assert_close(handler2.tracker.eps, handler.tracker.eps)
    for (k, a), (_, b) in zip(heads.state_dict().items(), heads2.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    restored, original = handler2.head_optimizer.state_dict(), handler.head_optimizer.state_dict()
    assert restored["state"].keys() == original["state"].keys()
    torch.testing.assert_close(restored["state"][0]["exp_avg"], original["state"][0]["exp_avg"])


def test_stats_handler_logs_balancing_stats(seg_setup, make_trainer, batches):
    net, heads, optimizer, loss = seg_setup
    handler = CGGMHandler(heads)
    trainer = make_trainer(net, optimizer, loss, batches(1))
    handler.attach(trainer)
    stats = StatsHandler(name="cggm_test_stats", state_attributes=handler.stat_names, iteration_log=False)
    stats.attach(trainer)
    records: list[str] = []
    collector = logging.Handler(level=logging.INFO)
    collector.emit = lambda record: records.append(record.getMessage())
    stats.logger.addHandler(collector)
    stats.logger.setLevel(logging.INFO)
    trainer.run()
    text = "\n".join(records)
    assert f"B_t1ce: {trainer.state.B_t1ce}" in text
    assert "L_gm" in text
