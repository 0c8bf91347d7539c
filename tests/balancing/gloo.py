"""Run a test module's ``_worker(rank, world, store, out)`` as two gloo ranks in plain subprocesses."""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@contextlib.contextmanager
def gloo_group(rank: int, world: int, store: str) -> Iterator[None]:
    """A worker's gloo process group on one thread: at the end both ranks wait for each other (done
    with their collectives before either tears gloo down), then the group is destroyed.

    The ranks meet through a file (``store``, a fresh path per test) rather than a TCP port: a port
    found free and released before rank 0 listens on it can be taken by another process meanwhile.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=Path(store).resolve().as_uri(),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_two_ranks(module: str, out: Path, timeout: float = 60) -> tuple[Any, Any]:
    """Start ``balancing.<module>._worker`` on ranks 0 and 1 and return what each saved to
    ``out/rank<r>.pt``. Plain subprocesses (not mp.spawn): the ranks import torch and that module
    only, not pytest."""
    tests_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    # os._exit after the worker: its results are saved and its process group destroyed; skipping the
    # interpreter's teardown avoids a rare abort there ("terminate called without an active
    # exception", a gloo thread destroyed at exit: 1 run in 50 with the barrier alone)
    code = (
        f"import os, sys; from balancing.{module} import _worker; "
        f"_worker(int(sys.argv[1]), 2, {str(out / 'rendezvous')!r}, {str(out)!r}); "
        "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)"
    )
    ranks = [subprocess.Popen([sys.executable, "-c", code, str(r)], env=env) for r in (0, 1)]
    assert [p.wait(timeout=timeout) for p in ranks] == [0, 0]
    return tuple(torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
