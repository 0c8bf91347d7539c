"""A lock file that keeps two training runs from writing into one checkpoint folder at once."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLock"]


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
