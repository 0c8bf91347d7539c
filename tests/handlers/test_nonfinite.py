"""A non-finite training step is skipped (no weight, head or tracker update), counted, logged, and a run
of them stops the training with a clear message."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from cggm_seg.handlers import CGGMHandler, NonFiniteGuard, NonFiniteTrainingError


def _snapshot(net, heads, handler):
    return {
        "net": copy.deepcopy(net.state_dict()),
        "heads": copy.deepcopy(heads.state_dict()),
        "tracker_step": handler.tracker.step,
        "head_steps": handler.head_trainer.steps,
        "history": len(handler.history),
    }


def _record(trainer, net, heads, handler):
    """(``"before"`` / ``"after"``, iteration) -> a snapshot, filled in as the trainer runs."""
    seen = {}
    for event, when in ((Events.ITERATION_STARTED, "before"), (Events.ITERATION_COMPLETED, "after")):
        trainer.add_event_handler(
            event,
            lambda e, when=when: seen.__setitem__((when, e.state.iteration), _snapshot(net, heads, handler)),
        )
    return seen


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_batch_is_skipped_and_training_goes_on(seg_setup, make_trainer, batches, caplog):
    net, heads, sgd, loss = seg_setup
    sgd = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    data = batches(4)
    data[1]["image"][0, 2, 3, 3, 3] = float("nan")  # one voxel of one sequence of iteration 2
    guard, handler = NonFiniteGuard(max_consecutive=3), CGGMHandler(heads)
    trainer = make_trainer(net, sgd, loss, data, handlers=[guard, handler])
    seen = _record(trainer, net, heads, handler)
    trainer.run()
    before, after = seen[("before", 2)], seen[("after", 2)]
    assert _equal(before["net"], after["net"])  # no weight update (nor momentum, nor weight decay)
    assert _equal(before["heads"], after["heads"])  # the heads did not train on the bad batch
    assert before["tracker_step"] == after["tracker_step"] and before["history"] == after["history"]
    assert not _equal(seen[("before", 3)]["net"], seen[("after", 3)]["net"])  # the next batch trains
    assert seen[("after", 3)]["tracker_step"] == after["tracker_step"] + 1
    assert guard.skipped == [2] and trainer.state.nonfinite_steps == 1
    assert "iteration 2: non-finite loss, the step was skipped (1 in a row, 1 in this run)" in caplog.text
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(torch.isfinite(p).all() for p in heads.parameters())


def test_non_finite_gradients_with_a_finite_loss_skip_the_network_step(seg_setup, make_trainer, batches):
    net, _, sgd, loss = seg_setup
    guard = NonFiniteGuard()
    trainer = make_trainer(net, sgd, loss, batches(2), handlers=[guard])
    from monai.engines.utils import IterationEvents

    def poison(engine):  # an overflow in backward
        if engine.state.iteration == 1:
            next(net.parameters()).grad.fill_(float("inf"))

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, poison)
    # the guard checks after the poison: attach order puts it first, so re-register it after
    trainer.remove_event_handler(guard.check_gradients, IterationEvents.BACKWARD_COMPLETED)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, guard.check_gradients)
    start = copy.deepcopy(net.state_dict())
    weights = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=1), lambda e: weights.update(copy.deepcopy(net.state_dict()))
    )
    trainer.run()
    assert guard.skipped == [1]
    assert _equal(start, weights)


def test_a_run_of_non_finite_steps_stops_the_training(seg_setup, make_trainer, batches):
    net, heads, sgd, loss = seg_setup
    data = batches(6)
    for batch in data[1:]:
        batch["image"][:] = float("nan")
    trainer = make_trainer(
        net, sgd, loss, data, handlers=[NonFiniteGuard(max_consecutive=3), CGGMHandler(heads)]
    )
    with pytest.raises(
        NonFiniteTrainingError, match=r"3 training steps in a row had a non-finite loss \(iterations 2-4\)"
    ):
        trainer.run()


def test_max_consecutive_must_be_positive():
    with pytest.raises(ValueError, match="max_consecutive must be >= 1"):
        NonFiniteGuard(max_consecutive=0)


@pytest.mark.parametrize("with_guard", [True, False])
def test_non_finite_gradients_undo_the_heads_and_tracker_step(seg_setup, make_trainer, batches, with_guard):
    from monai.engines.utils import IterationEvents

    net, heads, sgd, loss = seg_setup
    handler = CGGMHandler(heads)
    guard = NonFiniteGuard()
    trainer = make_trainer(net, sgd, loss, batches(3), handlers=[guard, handler] if with_guard else [handler])

    def poison(engine):  # the loss is finite, the backward overflows
        if engine.state.iteration == 2:
            next(net.parameters()).grad.fill_(float("nan"))

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, poison)
    # the poison must come first: re-register the checks after it, in the bundles' order
    checks = [guard.check_gradients] if with_guard else []
    for check in [*checks, handler.backward_completed]:
        trainer.remove_event_handler(check, IterationEvents.BACKWARD_COMPLETED)
        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, check)
    seen = _record(trainer, net, heads, handler)
    optimizer_states = []
    for event in (Events.ITERATION_STARTED(once=2), Events.ITERATION_COMPLETED(once=2)):
        trainer.add_event_handler(
            event, lambda e: optimizer_states.append(copy.deepcopy(handler.head_optimizer.state_dict()))
        )
    trainer.run()
    before, after = seen[("before", 2)], seen[("after", 2)]
    assert _equal(before["heads"], after["heads"])  # the heads' step was undone
    assert before["tracker_step"] == after["tracker_step"]  # so was the tracker's
    assert before["head_steps"] == after["head_steps"] == 1  # and the heads' step count (their sub-lattice)
    assert before["history"] == after["history"]  # and nothing was recorded
    start, end = (state["state"] for state in optimizer_states)  # the heads' Adam moments too
    assert start.keys() == end.keys() and start
    assert all(_equal(start[k], end[k]) for k in start)
    if with_guard:  # the network did not step either, and the next step is a normal one
        assert _equal(before["net"], after["net"]) and guard.skipped == [2]
        assert seen[("after", 3)]["tracker_step"] == after["tracker_step"] + 1
        assert seen[("after", 3)]["head_steps"] == 2
        assert not _equal(seen[("before", 3)]["heads"], seen[("after", 3)]["heads"])


@pytest.mark.parametrize("guard_first", [True, False])
def test_a_non_finite_direction_gradient_drops_the_step(seg_setup, make_trainer, batches, guard_first):
    """NaN head weights make the direction term's gradient NaN while the task gradients are finite:
    CGGM adds that gradient after the guard's check (or before it, attached first), and the step is
    dropped and counted all the same."""
    net, heads, sgd, loss = seg_setup
    guard, handler = NonFiniteGuard(), CGGMHandler(heads)
    order = [guard, handler] if guard_first else [handler, guard]
    trainer = make_trainer(net, sgd, loss, batches(2), handlers=order)

    def poison(engine):
        if engine.state.iteration == 2:
            with torch.no_grad():
                heads["t2"].final.weight.fill_(float("nan"))

    trainer.add_event_handler(Events.ITERATION_STARTED, poison)
    seen = _record(trainer, net, heads, handler)
    with pytest.warns(UserWarning, match="non-finite weights"):
        trainer.run()
    before, after = seen[("before", 2)], seen[("after", 2)]
    assert not _equal(seen[("before", 1)]["net"], seen[("after", 1)]["net"])  # iteration 1 trained
    assert _equal(before["net"], after["net"])  # iteration 2 did not, not even the final layer
    assert before["tracker_step"] == after["tracker_step"] and before["history"] == after["history"]
    assert guard.skipped == [2] and trainer.state.nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())
