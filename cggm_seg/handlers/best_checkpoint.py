"""The weights of the best validation epoch, kept in one file, and the record of that best."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from cggm_seg.balancing.distributed import rank
from cggm_seg.handlers.checkpoint import _state_of, atomic_save

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["BestCheckpoint"]


class BestCheckpoint:
    """Keep the weights of the best validation epoch in one file, and the record of that best.

    Attach it to the evaluator: after each validation whose key metric beats the best so far, it
    writes ``save_dict``'s state dicts to ``save_dir / filename`` (atomically, see
    :func:`atomic_save`). Its own :meth:`state_dict` (the best score and epoch) goes into the
    training run's per-epoch checkpoint, so that a resumed run does not overwrite the file with a
    worse epoch. Only rank 0 writes.

    Args:
        save_dir: the folder of the file.
        save_dict: name -> object with ``state_dict`` (network, heads, ...).
        filename: the file name. Defaults to ``"model.pt"``.
        metric_name: the metric to select on; ``None`` takes the evaluator's key metric.
        mode: ``"max"`` (default) or ``"min"``; a tie keeps the earlier epoch.
        name: logger name; ``None`` uses the engine's logger.

    Attributes:
        best_metric: the best score so far (``None`` before the first validation).
        best_epoch: the epoch of :attr:`best_metric` (-1 before the first validation).
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        metric_name: str | None = None,
        mode: str = "max",
        name: str | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        if not save_dict:
            raise ValueError("save_dict is empty: name the objects whose weights to keep.")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.metric_name = metric_name
        self.mode = mode
        self.logger = logging.getLogger(name)
        self._name = name
        self.best_metric: float | None = None
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _better(self, score: float) -> bool:
        if self.best_metric is None:
            return True
        return score > self.best_metric if self.mode == "max" else score < self.best_metric

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(
                f"BestCheckpoint selects on {name!r}, which the evaluator did not compute "
                f"(its metrics: {sorted(engine.state.metrics)})."
            )
        score = float(engine.state.metrics[name])
        if not math.isfinite(score):
            self.logger.warning(
                f"epoch {engine.state.epoch}: {name} is {score}; {self.path.name} is left as it is"
            )
            return
        if not self._better(score):
            return
        self.best_metric, self.best_epoch = score, int(engine.state.epoch)
        if rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({k: _state_of(v) for k, v in self.save_dict.items()}, self.path)
            self.logger.info(f"epoch {self.best_epoch}: best {name} so far, {score:.4f}; saved {self.path}")

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state.get("best_metric")
        self.best_metric = None if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch", -1))
