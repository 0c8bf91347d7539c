"""Per-epoch checkpoints of a training run, and resuming from the newest one.

A resumed run equals an uninterrupted one of the same seed (on a CPU, bit for bit): the per-epoch
checkpoint holds everything the next epoch depends on (the trainer's counters, the network, the
optimizer, the balancing handler, the best-on-validation record, the AMP scaler and every random
state: torch's, NumPy's, Python's and each random transform's of the training data). Checkpoints
are written atomically (to a ``.part`` file, then renamed), so a write cut off half-way leaves no
file that a resume would load.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from cggm_seg.balancing.branches import unwrap_model
from cggm_seg.balancing.distributed import rank
from cggm_seg.handlers.definition import RunDefinitionError, definition_differences
from cggm_seg.handlers.random_states import RandomStates
from cggm_seg.handlers.run_lock import RunLock

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ResumableCheckpoint", "atomic_save", "latest_checkpoint"]

_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
#: differences listed in a refused resume's message
_LISTED = 12


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` so that ``path`` is either absent, or its old content, or whole.

    The bytes go to ``<path>.part`` first, are flushed to disk, and the file is then renamed over
    ``path`` (an atomic replacement on POSIX file systems). A process killed during the write leaves
    at most the ``.part`` file, which no loader here reads; a failed write removes it.

    Returns:
        ``path``.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def _state_of(obj: Any) -> Any:
    """``obj.state_dict()``, of the module inside a ``DataParallel`` / DDP wrapper."""
    return (unwrap_model(obj) if isinstance(obj, nn.Module) else obj).state_dict()


def _epoch_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """The ``checkpoint_epoch=N.pt`` files in ``ckpt_dir`` (as ``CheckpointSaver`` names its
    per-epoch files) with their N, oldest epoch first."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    return sorted((int(m[1]), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir``, or None."""
    found = _epoch_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


class ResumableCheckpoint:
    """Save the run after every epoch; when the run starts again, continue from the newest save.

    On attach it completes ``save_dict`` with what a bundle cannot name inside the trainer's own
    handler list: the trainer itself (``"trainer"``: its epoch and iteration), its AMP
    ``GradScaler`` (``"scaler"``, when the trainer has an enabled one) and the run's
    :class:`RandomStates` (``"random_states"``, with the training dataset's transform). After each
    epoch it writes ``checkpoint_epoch=N.pt`` into ``ckpt_dir`` atomically (:func:`atomic_save`) and
    keeps the newest ``n_saved``, also across restarts. If ``resume`` and such a file exists, it
    restores everything from it when the trainer starts (the random states last), so that a run
    stopped at any point and started again with the same command ends as an uninterrupted run of
    the same seed would (on a CPU, bit for bit; ``tests/bundles/test_resume.py``). A newest file that
    does not load (cut off by a crash of an older version, or damaged) is renamed
    ``<name>.corrupt``, with a warning, and the next older one is used.

    Each checkpoint also records the run's ``definition`` (its data, seed and settings:
    :func:`~cggm_seg.handlers.run_definition`), and a resume whose definition differs from the
    checkpoint's is refused on attach, before anything is trained, with the differences listed:
    resuming would carry the saved run on under another definition and write its results over the
    old ones. A checkpoint that records no definition (saved by an older version) is resumed with a
    warning.

    Args:
        ckpt_dir: the folder for the per-epoch checkpoints.
        save_dict: name -> object with ``state_dict`` / ``load_state_dict`` (network, optimizer,
            balancing handler, :class:`BestCheckpoint`, lr scheduler...); the names ``"trainer"``,
            ``"scaler"`` and ``"random_states"`` are added on attach, and ``"definition"`` is the
            checkpoint's record of ``definition``.
        resume: continue from the newest checkpoint in ``ckpt_dir`` (False: always start from
            scratch; the older run's checkpoints are deleted as this run saves its own). Defaults
            to True.
        n_saved: how many per-epoch checkpoints to keep. Defaults to 1.
        map_location: passed to ``torch.load`` when resuming. Defaults to the CPU.
        name: logger name; ``None`` uses ``engine.logger``.
        definition: what defines the run, a JSON-able mapping (the bundles give
            :func:`~cggm_seg.handlers.run_definition`'s); ``None`` records and checks nothing.

    Raises:
        ValueError: ``save_dict`` names a reserved name, ``n_saved`` < 1, or ``definition`` is
            not JSON-able.
        RunDefinitionError: on attach, the checkpoint to resume was saved by a run of another
            definition; the message lists the differences (``key: saved -> this run's``).

    It also holds a :class:`RunLock` on ``ckpt_dir`` from attach to the end of the run, so that a
    second run started into the same folder refuses instead of mixing checkpoints.

    Attributes:
        resumed_from: the checkpoint the run resumes from, or None.
        lock: the run's :class:`RunLock`.
    """

    #: entries of a checkpoint that this handler adds to ``save_dict``'s (on attach, or the definition)
    RESERVED = ("trainer", "scaler", "random_states", "definition")

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: Mapping[str, Any],
        resume: bool = True,
        n_saved: int = 1,
        map_location: Any = "cpu",
        name: str | None = None,
        definition: Mapping[str, Any] | None = None,
    ) -> None:
        reserved = [k for k in self.RESERVED if k in save_dict]
        if reserved:
            raise ValueError(f"save_dict must not name {reserved}: they are added on attach.")
        if int(n_saved) < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        try:
            # compared with a saved one after a JSON round trip: tuples become lists, keys strings
            self.definition = (
                None if definition is None else json.loads(json.dumps(definition, allow_nan=False))
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"definition must be JSON-able (run_definition gives one): {err}") from None
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.n_saved = int(n_saved)
        self.map_location = map_location
        self.logger = logging.getLogger(name)
        self._name = name
        self.resumed_from: Path | None = None
        self.lock = RunLock(self.ckpt_dir)
        self.objects: dict[str, Any] = {}
        self._read: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if rank() == 0:
            self.lock.acquire()  # rank 0 holds it for the whole job
            engine.add_event_handler(Events.COMPLETED, self.lock.release)
        objects: dict[str, Any] = {**self.save_dict, "trainer": engine}
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and getattr(scaler, "is_enabled", lambda: True)():
            objects["scaler"] = scaler
        loader = getattr(engine, "data_loader", None)
        objects["random_states"] = RandomStates(getattr(getattr(loader, "dataset", None), "transform", None))
        self.objects = objects
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        found = self._resumable() if self.resume else None
        if found is None:
            self.logger.info(f"no checkpoint to resume from in {self.ckpt_dir}: training starts from scratch")
            return
        path, checkpoint = found
        self._check_definition(path, checkpoint)
        self.logger.info(f"resuming from {path}")
        self.resumed_from = path
        self._read = checkpoint  # loaded at STARTED, then dropped
        engine.add_event_handler(Events.STARTED, self.load, path)

    def _resumable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest per-epoch checkpoint that loads, and its content (kept for :meth:`load`, so
        the file is read once); those that do not load are renamed aside."""
        for _, path in reversed(_epoch_checkpoints(self.ckpt_dir)):
            try:
                checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
            except Exception as err:  # a truncated zip, a damaged pickle: not a checkpoint to resume
                if rank() == 0:
                    aside = path.with_name(path.name + ".corrupt")
                    os.replace(path, aside)
                    self.logger.warning(f"{path.name} does not load ({err}); moved to {aside.name}")
                continue
            return path, checkpoint
        return None

    def _check_definition(self, path: Path, checkpoint: Mapping[str, Any]) -> None:
        """Refuse (:class:`RunDefinitionError`) to resume ``checkpoint`` if it is another run's."""
        if self.definition is None:
            return
        saved = checkpoint.get("definition")
        if saved is None:
            self.logger.warning(
                f"{path.name} records no run definition (saved by an older version): it is resumed without "
                "checking that this run's data, seed and settings are the ones it was trained with"
            )
            return
        differences = definition_differences(json.loads(saved), self.definition)
        if not differences:
            return
        if rank() == 0:
            self.lock.release()
        listed = differences[:_LISTED]
        if len(differences) > _LISTED:
            listed.append(f"... and {len(differences) - _LISTED} more")
        raise RunDefinitionError(
            f"{path} was saved by a run that differs from this one in (saved -> this run):\n  "
            + "\n  ".join(listed)
            + "\nResuming it would carry that run on under this run's definition and write over its results, "
            "so nothing was trained.\nStart over in this folder with --resume False, or train into another "
            "one with --run_name NAME (in Python: resume=False, or another ckpt_dir)."
        )

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_epoch=N.pt`` (rank 0 only), keep the newest ``n_saved`` up to this
        epoch and delete the others, and any of a later epoch: another run's (one that this run,
        started with ``resume=False``, replaces), which a resume would otherwise take for the newest."""
        if rank() != 0:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {k: _state_of(v) for k, v in self.objects.items()}
        if self.definition is not None:
            state["definition"] = json.dumps(self.definition)
        epoch = engine.state.epoch
        atomic_save(state, self.ckpt_dir / f"checkpoint_epoch={epoch}.pt")
        found = _epoch_checkpoints(self.ckpt_dir)
        kept = [path for n, path in found if n <= epoch][-self.n_saved :]
        for _, stale in found:
            if stale not in kept:
                stale.unlink(missing_ok=True)

    def load(self, engine: Engine, path: Path) -> None:
        """Restore every object from ``path`` (at ``STARTED``; the content read on attach, not the
        file again), keeping the trainer's ``max_epochs``.

        Raises:
            ValueError: the checkpoint is further on than this run's ``max_epochs``.
        """
        checkpoint, self._read = self._read, None
        if checkpoint is None:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        missing = [k for k in self.objects if k not in checkpoint]
        if missing:
            self.logger.warning(
                f"{path.name} holds no {missing} (saved by another version or setting): they start afresh, "
                "and the resumed run can differ from an uninterrupted one"
            )
        prior_max_epochs = engine.state.max_epochs
        # the random states last: nothing that loads after them may draw from a generator
        order = sorted((k for k in self.objects if k in checkpoint), key=lambda k: k == "random_states")
        Checkpoint.load_objects(to_load={k: self.objects[k] for k in order}, checkpoint=checkpoint)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"the checkpoint {path} is at epoch {engine.state.epoch}, beyond this run's "
                f"epochs={prior_max_epochs}: give a larger --epochs to train on, or resume=False to start "
                "again."
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"restored epoch {engine.state.epoch} from {path}")
