"""Per-epoch checkpoints of a training run, resuming from the newest one, and the best epoch's weights.

A resumed run equals an uninterrupted one of the same seed (on a CPU, bit for bit): the per-epoch
checkpoint holds everything the next epoch depends on (the trainer's counters, the network, the
optimizer, the balancing handler, the best-on-validation record, the AMP scaler and every random
state: torch's, NumPy's, Python's and each random transform's of the training data). Checkpoints
are written atomically (to a ``.part`` file, then renamed), so a write cut off half-way leaves no
file that a resume would load.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import random
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from cggm_seg.balancing.branches import unwrap_model
from cggm_seg.balancing.distributed import rank, world_size

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "BestCheckpoint",
    "RandomStates",
    "ResumableCheckpoint",
    "RunLock",
    "atomic_save",
    "latest_checkpoint",
]

_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


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


def _numpy_state(state: tuple) -> dict[str, Any]:
    """NumPy's ``RandomState.get_state()`` as tensors and numbers (loadable with weights_only=True)."""
    name, key, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    key = np.asarray(state["key"].numpy(), dtype=np.uint32)
    return (state["name"], key, state["pos"], state["has_gauss"], state["cached_gaussian"])


def _random_transforms(transform: Any) -> list[np.random.RandomState]:
    """The NumPy generators of every MONAI ``Randomizable`` in ``transform`` (a ``Compose`` or a
    transform), nested ones included (a dictionary transform's array transform), in a fixed order."""
    from monai.transforms import Randomizable, Transform

    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for child in obj:
                visit(child)
            return
        if not isinstance(obj, (Transform, Randomizable)):
            return
        generator = getattr(obj, "R", None)
        if isinstance(obj, Randomizable) and isinstance(generator, np.random.RandomState):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
        for child in vars(obj).values():
            visit(child)

    visit(transform)
    return found


class RandomStates:
    """Every random state a training epoch draws from, as one checkpointable object.

    Torch's CPU generator (the data loader's shuffling), the CUDA generators where there is a GPU,
    NumPy's and Python's global generators, and the generator of every random transform of
    ``transform`` (the training data's augmentation). Saved after an epoch and loaded when a run
    resumes, they make the next epoch draw what an uninterrupted run would.

    Under ``torch.distributed`` with more than one rank the states are saved (by rank 0) but not
    loaded: giving every rank rank 0's states would make the ranks augment alike.

    Args:
        transform: the training dataset's transform (``None``: the global generators only).
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": _python_state(random.getstate()),
            "transforms": [_numpy_state(r.get_state()) for r in _random_transforms(self.transform)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint's random transforms are not this run's (another pipeline).
        """
        if world_size() > 1:
            logging.getLogger("cggm_seg.handlers").info(
                "random states are not restored under torch.distributed (each rank keeps its own)"
            )
            return
        generators = _random_transforms(self.transform)
        if len(generators) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds the states of {len(state['transforms'])} random transforms, this "
                f"run's training transform has {len(generators)}: it was saved by another data pipeline."
            )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        random.setstate(_python_tuple(state["python"]))
        for generator, saved in zip(generators, state["transforms"]):
            generator.set_state(_numpy_tuple(saved))


def _python_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_tuple(state: Mapping[str, Any]) -> tuple:
    return (state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"])


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


def _epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The ``checkpoint_epoch=N.pt`` files in ``ckpt_dir`` (as ``CheckpointSaver`` names its
    per-epoch files), oldest epoch first."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir``, or None."""
    found = _epoch_checkpoints(ckpt_dir)
    return found[-1] if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """A lock file that keeps two training runs from writing into one checkpoint folder at once.

    ``acquire`` creates ``<folder>/run.lock`` (atomically) with this process's id, host and start
    time. A lock held by another live process on this host refuses the run with a message naming
    it; a lock left by a process that no longer exists (a killed run) is taken over, with a
    warning. The same process may acquire it again. ``release`` (also at exit) removes it.

    Args:
        folder: the run's checkpoint folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "run.lock"
        self.held = False
        self.logger = logging.getLogger("cggm_seg.handlers")

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RuntimeError: another live process on this host holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder() or {}
                pid, host = int(holder.get("pid", -1)), holder.get("host")
                if pid == os.getpid() and host == me["host"]:
                    self.held = True
                    return
                if host == me["host"] and pid > 0 and _alive(pid):
                    raise RuntimeError(
                        f"another run (process {pid}, started {holder.get('started', '?')}) is training into "
                        f"{self.path.parent}; two runs there would mix their checkpoints. Wait for it to "
                        "finish, stop it, or give this run another --run_name (or --bundle_root)."
                    ) from None
                if host not in (None, me["host"]):
                    raise RuntimeError(
                        f"{self.path} is held by process {pid} on host {host!r}; if that run is over, delete "
                        "the file and start again."
                    ) from None
                self.logger.warning(f"taking over {self.path}, left by process {pid} that no longer runs")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return

    def release(self, *_: Any) -> None:
        """Remove the lock if this process holds it."""
        if self.held and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


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

    Args:
        ckpt_dir: the folder for the per-epoch checkpoints.
        save_dict: name -> object with ``state_dict`` / ``load_state_dict`` (network, optimizer,
            balancing handler, :class:`BestCheckpoint`, lr scheduler...); the names ``"trainer"``,
            ``"scaler"`` and ``"random_states"`` are added on attach.
        resume: continue from the newest checkpoint in ``ckpt_dir`` (False: always start from
            scratch, older checkpoints are overwritten). Defaults to True.
        n_saved: how many per-epoch checkpoints to keep. Defaults to 1.
        map_location: passed to ``torch.load`` when resuming. Defaults to the CPU.
        name: logger name; ``None`` uses ``engine.logger``.

    It also holds a :class:`RunLock` on ``ckpt_dir`` from attach to the end of the run, so that a
    second run started into the same folder refuses instead of mixing checkpoints.

    Attributes:
        resumed_from: the checkpoint the run resumes from, or None.
        lock: the run's :class:`RunLock`.
    """

    #: names that attach adds to ``save_dict``
    RESERVED = ("trainer", "scaler", "random_states")

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: Mapping[str, Any],
        resume: bool = True,
        n_saved: int = 1,
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        reserved = [k for k in self.RESERVED if k in save_dict]
        if reserved:
            raise ValueError(f"save_dict must not name {reserved}: they are added on attach.")
        if int(n_saved) < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
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
        self.logger.info(f"resuming from {path}")
        self.resumed_from = path
        self._read = checkpoint  # loaded at STARTED, then dropped
        engine.add_event_handler(Events.STARTED, self.load, path)

    def _resumable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest per-epoch checkpoint that loads, and its content (kept for :meth:`load`, so
        the file is read once); those that do not load are renamed aside."""
        for path in reversed(_epoch_checkpoints(self.ckpt_dir)):
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

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_epoch=N.pt`` (rank 0 only) and delete those beyond the newest ``n_saved``."""
        if rank() != 0:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {k: _state_of(v) for k, v in self.objects.items()}
        atomic_save(state, self.ckpt_dir / f"checkpoint_epoch={engine.state.epoch}.pt")
        for stale in _epoch_checkpoints(self.ckpt_dir)[: -self.n_saved]:
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
