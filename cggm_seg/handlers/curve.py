"""A validation curve on disk: one CSV row of an evaluator's metrics per validation run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ValidationCurve"]


class ValidationCurve:
    """Append the evaluator's metrics to ``csv_file`` after every validation run.

    Attach it to a ``SupervisedEvaluator`` run by a ``ValidationHandler``: the evaluator's epoch is
    then the trainer's epoch, written in the ``epoch`` column, followed by every metric in
    ``engine.state.metrics`` (``val_mean_dice``, ``val_mean_dice_tc``...). A resumed run keeps
    appending to the same file, so the file holds the whole curve; a row for an epoch that is
    already there replaces nothing (the file is an append-only log, read it with the last row per epoch).

    Args:
        csv_file: the CSV file (its folder is created).
    """

    def __init__(self, csv_file: str | Path) -> None:
        self.csv_file = Path(csv_file)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        row = {"epoch": int(engine.state.epoch), **metrics}
        self.csv_file.parent.mkdir(parents=True, exist_ok=True)
        new = not self.csv_file.is_file() or self.csv_file.stat().st_size == 0
        with open(self.csv_file, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
