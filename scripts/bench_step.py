"""Training-step time of BraTS bundle variants against joint training, measured on the bundle's own trainer.

Each variant of ``scripts/variants.py`` is built from the bundle (its network, heads, method,
recipe and ``SupervisedTrainer``, balancing handler included; validation, checkpoints and logging
left out) and trains on synthetic crops held in memory, so that a step is exactly the bundle's
step and nothing else. The variants run round-robin, ``--rounds`` times ``--steps`` iterations
each, after ``--warmup`` iterations; the median step of each variant and its ratio to joint's
median come from the same process, on the same machine, at the same time.

    python scripts/bench_step.py --methods joint two_view two_view_k4 --crop 32
    python scripts/bench_step.py --methods joint two_view --crop 64 --threads 2

Results: ``docs/results/step.json`` (``--results``), and a table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402
from variants import VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batches(n: int, crop: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of one ``4 x crop^3`` image with nested spheres as TC / WT / ET, brighter in
    T1ce and FLAIR inside the tumour."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(crop, dtype=torch.float32)] * 3, indexing="ij"))
    batches = []
    for _ in range(n):
        centre = crop * (0.3 + 0.4 * torch.rand(3, 1, 1, 1, generator=g))
        dist = (grid - centre).square().sum(0, keepdim=True).sqrt()
        label = torch.cat([dist < crop / 10, dist < crop / 6, dist < crop / 20]).float()
        image = torch.randn(4, crop, crop, crop, generator=g)
        image[1] += 2.0 * label[2]
        image[3] += 1.5 * label[1]
        batches.append({"image": image[None], "label": label[None]})
    return batches


def build_trainer(name: str, batches: list[dict[str, torch.Tensor]], crop: int, seed: int):
    """The variant's ``SupervisedTrainer`` with only its balancing handler, on ``batches``."""
    variant = VARIANTS[name]
    parser = ConfigParser()
    parser.read_config(variant.config_files)
    parser.update(
        {
            **variant.overrides,
            "device": "$torch.device('cpu')",
            "seed": seed,
            "roi_size": [crop] * 3,
            "data": {"training": [], "validation": [], "test": [], "layout": "brats2021"},
            "train#dataloader": batches,
            "train#handler_set": {"balancing": "@balancing"},
            "train#key_metric": None,
            "train#postprocessing": None,
        }
    )
    torch.manual_seed(seed)
    return parser.get_parsed_content("train#trainer")


def time_steps(trainer, steps: int) -> list[float]:
    """Seconds of each of ``steps`` iterations of one more epoch of ``trainer``."""
    from ignite.engine import Events

    times: list[float] = []
    started = [0.0]

    def start(_):
        started[0] = time.perf_counter()

    def stop(_):
        times.append(time.perf_counter() - started[0])

    with (
        trainer.add_event_handler(Events.ITERATION_STARTED, start),
        trainer.add_event_handler(Events.ITERATION_COMPLETED, stop),
    ):
        trainer.state.max_epochs = (trainer.state.epoch or 0) + 1
        trainer.state.epoch_length = steps
        trainer.run()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["joint", "two_view"], choices=list(VARIANTS))
    p.add_argument("--crop", type=int, default=32, help="cubic crop (default 32, the benchmark's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "step.json")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if "joint" not in args.methods:
        args.methods.insert(0, "joint")
    batches = synthetic_batches(args.steps, args.crop, args.seed)
    trainers = {}
    for name in args.methods:
        trainer = build_trainer(name, batches, args.crop, args.seed)
        trainer.state.max_epochs, trainer.state.epoch_length = 1, args.warmup
        trainer.run()  # warm-up epoch: binds the method, allocates
        trainers[name] = trainer
    times: dict[str, list[float]] = {name: [] for name in args.methods}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            times[name] += time_steps(trainer, args.steps)
    joint = statistics.median(times["joint"])
    rows = {
        name: {
            "median_s": statistics.median(t),
            "ratio_to_joint": statistics.median(t) / joint,
            "steps": len(t),
            "description": VARIANTS[name].description,
        }
        for name, t in times.items()
    }
    print(f"crop {args.crop}^3, {args.threads} thread(s), {args.rounds} x {args.steps} steps per variant")
    print("| variant | median step (s) | vs joint |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.3f} | {row['ratio_to_joint']:.2f}x |")
    if not args.no_write:
        settings = {k: getattr(args, k) for k in ("crop", "steps", "rounds", "warmup", "threads", "seed")}
        settings["reproduce"] = "python scripts/bench_step.py " + " ".join(sys.argv[1:])
        source = f"scripts/bench_step.py, run on {time.strftime('%Y-%m-%d')}"
        write_results(
            args.results,
            {"benchmark": "bench_step", "source": source, "settings": settings, "variants": rows},
        )
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
