"""Per-epoch checkpoints of a training run, and resuming from the newest one."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ResumableCheckpoint", "RunLock", "latest_checkpoint"]

_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


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

    On attach it adds the trainer itself to ``save_dict`` (under ``"trainer"``, so its epoch and
    iteration are saved too; a bundle cannot name the trainer inside the trainer's own handler
    list), attaches a ``CheckpointSaver`` that writes ``checkpoint_epoch=N.pt`` into ``ckpt_dir``
    after each epoch (keeping the last ``n_saved``, also across restarts: the saver only knows the
    files it wrote itself), and, if ``resume`` and such a file exists,
    a ``CheckpointLoader`` that restores everything from it when the trainer starts. A run stopped
    after epoch N and started again with the same command carries on with epoch N + 1.

    Args:
        ckpt_dir: the folder for the per-epoch checkpoints.
        save_dict: name -> object with ``state_dict`` / ``load_state_dict`` (network, optimizer,
            balancing handler, lr scheduler...); ``"trainer"`` is added on attach.
        resume: continue from the newest checkpoint in ``ckpt_dir`` (False: always start from
            scratch, older checkpoints are overwritten). Defaults to True.
        n_saved: how many per-epoch checkpoints to keep. Defaults to 1.
        map_location: passed to ``torch.load`` when resuming. Defaults to the CPU.
        name: logger name; ``None`` uses ``engine.logger``.

    It also holds a :class:`RunLock` on ``ckpt_dir`` from attach to the end of the run, so that a
    second run started into the same folder refuses instead of mixing checkpoints.

    Attributes:
        resumed_from: the checkpoint loaded on attach, or None.
        lock: the run's :class:`RunLock`.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: Mapping[str, Any],
        resume: bool = True,
        n_saved: int = 1,
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        if "trainer" in save_dict:
            raise ValueError("save_dict must not name 'trainer': the trainer is added on attach")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.n_saved = n_saved
        self.map_location = map_location
        self.logger = logging.getLogger(name)
        self._name = name
        self.resumed_from: Path | None = None
        self.lock = RunLock(self.ckpt_dir)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            self.lock.acquire()  # rank 0 holds it for the whole job
            engine.add_event_handler(Events.COMPLETED, self.lock.release)
        objects = {**self.save_dict, "trainer": engine}
        CheckpointSaver(
            str(self.ckpt_dir), objects, save_interval=1, n_saved=self.n_saved, epoch_level=True
        ).attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._prune)  # after the saver's own handler
        path = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if path is None:
            self.logger.info(f"no checkpoint to resume from in {self.ckpt_dir}: training starts from scratch")
            return
        self.logger.info(f"resuming from {path}")
        CheckpointLoader(str(path), objects, map_location=self.map_location).attach(engine)
        self.resumed_from = path

    def _prune(self, engine: Engine) -> None:
        """Delete per-epoch checkpoints beyond the newest ``n_saved`` (left by an earlier process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return  # only rank 0 writes checkpoints
        for stale in _epoch_checkpoints(self.ckpt_dir)[: -self.n_saved]:
            stale.unlink(missing_ok=True)
