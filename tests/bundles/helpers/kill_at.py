"""A handler the resume test adds to a bundle run: SIGKILL the process in the middle of an epoch.

``CGGM_SEG_TEST_KILL_EPOCH=N`` kills the run at the middle iteration of epoch N (after the
checkpoint of epoch N - 1, before that of N); without the variable the handler does nothing, so
the same command line runs uninterrupted.
"""

from __future__ import annotations

import os
import signal


class KillAt:
    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        epoch = os.environ.get("CGGM_SEG_TEST_KILL_EPOCH")
        if epoch is None or engine.state.epoch != int(epoch):
            return
        local = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if local == max(1, engine.state.epoch_length // 2):
            os.kill(os.getpid(), signal.SIGKILL)
