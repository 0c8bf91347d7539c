"""Does the order matter? The heads' step before or after the main backward, against plain training.

CGGM (full) and OGM-GE steps with the heads' step before or after the main backward, interleaved
round-robin with plain training in one process (cpu_small, 64^3, batch 1, one thread,
half-resolution heads, 3 warm-up and 20 measured rounds by default). Prints each variant's median
step and its ratio to plain's; nothing is written.

The bundle's handler observes after the backward (when the network's activations are freed); this
measures what that order saves. The methods are the bundle's (``cggm``; ``ogmge_level1``, OGM-GE
with half-resolution heads every step on every voxel), built by ``bench_overhead.build_variant``.

    python scripts/bench_order.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead as bo  # noqa: E402

ROWS = [
    ("plain", "-"),
    ("cggm", "before"),
    ("cggm", "after"),
    ("ogmge_level1", "before"),
    ("ogmge_level1", "after"),
]


def build(variant: str, order: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A training step of ``variant`` whose method observes ``order`` (``"before"`` or ``"after"``)
    the main backward."""
    built = bo.build_variant(variant, "cpu_small", torch.device("cpu"), seed=0)
    network, loss_fn, optimizer, method = built.network, built.loss, built.optimizer, built.method

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        if method is None:
            loss.backward()
            optimizer.step()
            return
        if order == "before":
            method.observe(y)
            loss.backward()
        else:
            loss.backward()
            method.observe(y)
        method.step(optimizer, epoch=0)

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    batches = bo.make_batches(64, 1, torch.device("cpu"), 0)
    steps = {row: build(*row) for row in ROWS}
    times: dict[tuple[str, str], list[float]] = {row: [] for row in ROWS}
    for i in range(args.warmup + args.rounds):
        x, y = batches[i % len(batches)]
        k = i % len(ROWS)
        for row in ROWS[k:] + ROWS[:k]:
            start = time.perf_counter()
            steps[row](x, y)
            if i >= args.warmup:
                times[row].append(time.perf_counter() - start)
    plain = statistics.median(times[("plain", "-")])
    for row in ROWS:
        median = statistics.median(times[row])
        ratio = median / plain
        print(f"{row[0]:12s} heads {row[1]:6s}: median {1e3 * median:.0f} ms, ratio to plain {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
