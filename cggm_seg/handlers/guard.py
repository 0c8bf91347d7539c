"""Skip training steps whose loss or gradients are not finite, count them, stop a run that only makes them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from cggm_seg.handlers.utils import engine_network, is_finite

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["NonFiniteGuard", "NonFiniteTrainingError"]


class NonFiniteTrainingError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradients."""


class NonFiniteGuard:
    """A step with a non-finite loss or non-finite gradients is skipped: no weight changes.

    At ``LOSS_COMPLETED`` it checks the loss; at ``BACKWARD_COMPLETED`` the network's gradients
    (under AMP only the loss: the ``GradScaler`` skips overflowing steps itself). A step found
    non-finite has every gradient set to ``None``, so the optimizer leaves every weight as it is
    (no update, no momentum, no weight decay). Its verdict is ``engine.state.nonfinite_step``
    (``None``, ``"loss"`` or ``"gradients"``): on either, the balancing handlers neither train their
    heads nor update their tracker (they do both after this check). Each skip is logged with
    its iteration and counted; ``max_consecutive`` skips in a row stop the run with
    :class:`NonFiniteTrainingError`.

    Attach it before the balancing handler (the bundles list it first). A balancing handler that
    adds to the gradients after this check (CGGM's direction term) and finds its addition not
    finite drops the step the same way, undoes its heads' step and sets the verdict, which is
    counted here.

    Args:
        max_consecutive: skipped steps in a row that stop the run (>= 1). Defaults to 10.
        network: the network whose gradients are checked; ``None`` takes ``engine.network``.
        name: logger name; ``None`` uses ``engine.logger``.

    Attributes:
        skipped: the iterations skipped so far.
        in_a_row: the current run of skipped iterations.
    """

    def __init__(
        self, max_consecutive: int = 10, network: torch.nn.Module | None = None, name: str | None = None
    ):
        if int(max_consecutive) < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive = int(max_consecutive)
        self.network = network
        self.logger = logging.getLogger(name)
        self._name = name
        self.skipped: list[int] = []
        self.in_a_row = 0
        self._bad: str | None = None

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self.check_loss, IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.check_loss)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.check_gradients)
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.completed)

    def check_loss(self, engine: Engine) -> None:
        self._bad = None if is_finite(engine.state.output["loss"]) else "loss"
        engine.state.nonfinite_step = self._bad

    def check_gradients(self, engine: Engine) -> None:
        network = engine_network(engine, self.network)
        amp = bool(getattr(engine, "amp", False))
        self._bad = self._bad or getattr(engine.state, "nonfinite_step", None)  # a handler before this one
        if self._bad is None and not amp:
            if not is_finite([p.grad for p in network.parameters() if p.grad is not None]):
                self._bad = "gradients"
        engine.state.nonfinite_step = self._bad  # None, "loss" or "gradients": the balancing handlers read it
        if self._bad is not None:
            for p in network.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient

    def completed(self, engine: Engine) -> None:
        # a balancing handler may have found the gradients it added not finite, after this check
        self._bad = self._bad or getattr(engine.state, "nonfinite_step", None)
        if self._bad is None:
            self.in_a_row = 0
            return
        iteration = engine.state.iteration
        self.skipped.append(iteration)
        self.in_a_row += 1
        engine.state.nonfinite_steps = len(self.skipped)
        self.logger.warning(
            f"iteration {iteration}: non-finite {self._bad}, the step was skipped "
            f"({self.in_a_row} in a row, {len(self.skipped)} in this run)"
        )
        what = self._bad
        self._bad = None
        if self.in_a_row >= self.max_consecutive:
            first = self.skipped[-self.max_consecutive]
            raise NonFiniteTrainingError(
                f"{self.max_consecutive} training steps in a row had a non-finite {what} (iterations "
                f"{first}-{iteration}); nothing was learned from them. Check the data for NaN or inf "
                "values (cggm-seg check), or lower the learning rate."
            )

    def state_dict(self) -> dict[str, object]:
        return {"skipped": list(self.skipped), "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.skipped = [int(i) for i in state.get("skipped", [])]  # type: ignore[union-attr]
        self.in_a_row = int(state.get("in_a_row", 0))  # type: ignore[arg-type]
