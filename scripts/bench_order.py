"""Does the order matter? CGGM (full) and OGM-GE steps with the heads' step before or after the
main backward, interleaved round-robin with joint training in one process (cpu_small, 64^3,
batch 1, one thread, half-resolution heads, 3 warm-up and 20 measured rounds). Prints each
variant's median step and its ratio to joint's; nothing is written to the docs.

    python scripts/bench_order.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead as bo  # noqa: E402

from cggm_seg.balancing import CGGM, OGMGE, HeadTrainer  # noqa: E402
from cggm_seg.networks import MultiEncoderSegNet, make_heads  # noqa: E402

VARIANTS = [("joint", "-"), ("cggm", "before"), ("cggm", "after"), ("ogmge", "before"), ("ogmge", "after")]


def build(method: str, order: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    torch.manual_seed(0)
    model = MultiEncoderSegNet.from_preset("cpu_small", cpu_fast_paths=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    loss_fn = bo.make_loss()
    if method == "joint":

        def joint_step(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()

        return joint_step
    heads = make_heads("segmentation", model, level=1)
    score = "region_true_class_probability" if method == "ogmge" else "soft_dice"
    trainer = HeadTrainer(heads, loss_fn, torch.optim.SGD(heads.parameters(), lr=1e-2, momentum=0.9), score)
    if method == "ogmge":
        ogm = OGMGE(model, trainer, alpha=0.8, seed=0)

        def observe(loss: torch.Tensor, y: torch.Tensor) -> None:
            ogm.observe(y)

        def update() -> None:
            ogm.step(optimizer, epoch=0)

    else:
        cggm = CGGM(model, trainer, loss_fn)
        observe = cggm.training_loss

        def update() -> None:
            cggm.step(optimizer)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if order == "before":
            observe(loss, y)
            loss.backward()
        else:
            loss.backward()
            observe(loss, y)
        update()

    return step


def main() -> int:
    torch.set_num_threads(1)
    batches = bo.make_batches(64, 1, torch.device("cpu"), 0)
    steps = {v: build(*v) for v in VARIANTS}
    times: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}
    for i in range(23):
        x, y = batches[i % len(batches)]
        k = i % len(VARIANTS)
        for v in VARIANTS[k:] + VARIANTS[:k]:
            start = time.perf_counter()
            steps[v](x, y)
            if i >= 3:
                times[v].append(time.perf_counter() - start)
    joint = statistics.median(times[("joint", "-")])
    for v in VARIANTS:
        median = statistics.median(times[v])
        print(f"{v[0]:6s} heads {v[1]:6s}: median {1e3 * median:.0f} ms, ratio to joint {median / joint:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
