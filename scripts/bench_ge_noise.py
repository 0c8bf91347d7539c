"""What OGM-GE's GE noise costs on a CPU, and what other ways of drawing it cost (issue 11).

OGM-GE adds ``h ~ N(0, std(g)^2)`` to every gradient tensor of every branch, each iteration of its
window: one Gaussian value per encoder parameter (1.45 M in 88 tensors for ``cpu_small``). This
times that phase, and the alternatives tried for it, inside real training steps of the BraTS
bundle's network, loss and optimizer with its OGM-GE (variant ``ogmge``, built by
``bench_overhead.build_variant``; zero_grad, forward, loss, backward, the variant, SGD step),
round-robin, one step of each variant in turn on the same model and batches, so that a busy
machine slows them alike and the gradients are real ones:

- ``none``: no noise (the step a joint method takes);
- ``toolkit``: :meth:`cggm_seg.balancing.OGMGE.apply_magnitude` with ``k = (0.5, 1, 1, 1)``, what
  OGM-GE runs;
- ``std``: only the per-tensor standard deviations the noise needs;
- ``randn``: only the draws, one ``torch.randn`` per gradient tensor, as the toolkit draws them;
- ``randn_flat``: one ``torch.randn`` per branch of the same number of values;
- ``flat_foreach``: the whole noise with that draw: each branch's stds, one draw split into one
  view per gradient, the views scaled and added by ``torch._foreach_*`` operations;
- ``numpy_pcg64`` / ``numpy_sfc64``: the draws from NumPy's generators (``standard_normal``,
  float32), one per tensor;
- ``threaded``: the toolkit's noise with the branches on a pool of two Python threads, each branch
  with its own generator (torch releases the GIL inside an operation).

The threaded variant runs in a process of its own, beside ``none`` and ``toolkit`` again: once a
Python thread has run torch operations, it keeps an OpenMP team of its own, which would weigh on
the other variants' steps. Each row gives the median of the phase alone and of the whole step,
and the step's ratio to ``none``'s of the same process: what the variant would cost a step.

    python scripts/bench_ge_noise.py --threads 1
    python scripts/bench_ge_noise.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import monai
import numpy as np
import torch

from cggm_seg.balancing import OGMGE, branch_parameters
from cggm_seg.networks import MultiEncoderSegNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import build_variant, make_batches, update_doc  # noqa: E402

VARIANTS: dict[str, str] = {
    "none": "no noise (joint's step)",
    "toolkit": "the toolkit's GE noise (OGMGE.apply_magnitude, k = 0.5, 1, 1, 1)",
    "std": "the per-tensor standard deviations alone",
    "randn": "the draws alone, one torch.randn per tensor (the toolkit's)",
    "randn_flat": "the draws alone, one torch.randn per branch",
    "flat_foreach": "the whole noise, one draw per branch split into views, foreach scale and add",
    "numpy_pcg64": "the draws alone, NumPy PCG64 standard_normal (float32) per tensor",
    "numpy_sfc64": "the draws alone, NumPy SFC64 standard_normal (float32) per tensor",
    "threaded": "the toolkit's noise, branches on two Python threads, one generator each",
}


def build_variants(ogm: OGMGE, optimizer: torch.optim.Optimizer, seed: int) -> dict[str, Callable[[], None]]:
    """The noise phase of each variant, on the gradients of ``ogm``'s branches."""
    branches = ogm.params_by_modality
    generator = torch.Generator().manual_seed(seed)
    numpy_generators = {
        "numpy_pcg64": np.random.Generator(np.random.PCG64(seed)),
        "numpy_sfc64": np.random.Generator(np.random.SFC64(seed)),
    }
    per_branch = {m: torch.Generator().manual_seed(seed + i) for i, m in enumerate(branches)}
    pool = ThreadPoolExecutor(2)

    def toolkit() -> None:
        ogm.apply_magnitude(optimizer, epoch=0)

    def std() -> None:
        for params in branches.values():
            for p in params:
                float(p.grad.std())

    def randn() -> None:
        for params in branches.values():
            for p in params:
                torch.randn(p.grad.shape, generator=generator)

    def randn_flat() -> None:
        for params in branches.values():
            torch.randn(sum(p.numel() for p in params), generator=generator)

    def flat_foreach() -> None:
        for modality, params in branches.items():
            factor = float(ogm.k[ogm.modalities.index(modality)])
            grads = [p.grad for p in params if p.grad.numel() > 1]
            spreads = torch.stack([g.std() for g in grads]).tolist()
            if factor != 1.0:
                torch._foreach_mul_(grads, factor)
            kept = [(g, v) for g, v in zip(grads, spreads) if v > 0.0 and math.isfinite(v)]
            sizes = [g.numel() for g, _ in kept]
            draw = torch.randn(sum(sizes), generator=generator)
            noise = [z.view(g.shape) for z, (g, _) in zip(draw.split(sizes), kept)]
            torch._foreach_mul_(noise, [v for _, v in kept])
            torch._foreach_add_([g for g, _ in kept], noise)

    def numpy_draws(name: str) -> Callable[[], None]:
        rng = numpy_generators[name]

        def draw() -> None:
            for params in branches.values():
                for p in params:
                    torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32))

        return draw

    def one_branch(modality: str) -> None:
        factor = float(ogm.k[ogm.modalities.index(modality)])
        ogm._modulate_branch(branches[modality], factor, per_branch[modality])  # the toolkit's code

    def threaded() -> None:
        for future in [pool.submit(one_branch, m) for m in branches]:
            future.result()

    return {
        "none": lambda: None,
        "toolkit": toolkit,
        "std": std,
        "randn": randn,
        "randn_flat": randn_flat,
        "flat_foreach": flat_foreach,
        "numpy_pcg64": numpy_draws("numpy_pcg64"),
        "numpy_sfc64": numpy_draws("numpy_sfc64"),
        "threaded": threaded,
    }


#: the variants of each child process (see the module docstring)
GROUPS: dict[str, tuple[str, ...]] = {
    "plain": tuple(v for v in VARIANTS if v != "threaded"),
    "threaded": ("none", "toolkit", "threaded"),
}


def time_variants(args: argparse.Namespace, group: str) -> dict[str, list[tuple[float, float]]]:
    """Per variant of ``group``, (phase seconds, step seconds) of each measured step."""
    device = torch.device("cpu")
    built = build_variant("ogmge", "cpu_small", device, args.seed)  # the bundle's OGM-GE
    model, loss_fn, optimizer, ogm = built.network, built.loss, built.optimizer, built.method
    ogm.remove()  # the heads are not trained here: only the modulation is timed
    ogm.k = torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    batches = make_batches(args.crop, 1, device, args.seed)
    variants = build_variants(ogm, optimizer, args.seed)
    names = list(GROUPS[group])
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        k = i % len(names)
        for j, name in enumerate(names[k:] + names[:k]):
            x, y = batches[(i + j) % len(batches)]
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            t1 = time.perf_counter()
            variants[name]()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            if i >= args.warmup:
                measured[name].append((t2 - t1, t3 - t0))
        if (i + 1) % 10 == 0:
            print(f"  round {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    return measured


def markers(threads: int) -> tuple[str, str]:
    key = f"cpu_small threads={threads}"
    return (
        f"<!-- bench_ge_noise:begin {key} (written by scripts/bench_ge_noise.py) -->",
        f"<!-- bench_ge_noise:end {key} -->",
    )


def markdown(args: argparse.Namespace, measured: dict[str, dict[str, list[list[float]]]], load: str) -> str:
    begin, end = markers(args.threads)
    branches = branch_parameters(MultiEncoderSegNet.from_preset("cpu_small"), None).values()
    n_values, n_tensors = sum(p.numel() for ps in branches for p in ps), sum(len(ps) for ps in branches)
    lines = [
        begin,
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"MONAI {monai.__version__}, NumPy {np.__version__}, intra-op threads: {torch.get_num_threads()}; "
        f"load average (1 min) {load}.",
        "",
        f"Settings: `cpu_small` MultiEncoderSegNet (encoders: {n_values / 1e6:.2f} M parameters in "
        f"{n_tensors} tensors, one noise value each), crop "
        f"{args.crop}^3, batch 1, the bundle's loss and optimizer (SGD, momentum 0.9), {args.warmup} "
        f"warm-up and {args.steps} measured steps per variant, round-robin.",
        "",
        "| process | variant | noise phase, median (ms) | step, median (ms) | step ratio to no noise |",
        "|---|---|---|---|---|",
    ]
    for group, runs in measured.items():
        none_step = statistics.median(step for _, step in runs["none"])
        for name in GROUPS[group]:
            phase = statistics.median(p for p, _ in runs[name]) * 1e3
            step = statistics.median(s for _, s in runs[name])
            lines.append(
                f"| {group} | {VARIANTS[name]} | {phase:.2f} | {step * 1e3:.1f} | {step / none_step:.3f} |"
            )
    lines += [
        "",
        f"Reproduce: `python scripts/bench_ge_noise.py --threads {args.threads} --steps {args.steps}`",
        end,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--steps", type=int, default=40, help="measured steps per variant (default 40)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first (default 3)")
    p.add_argument("--crop", type=int, default=64, help="cubic crop edge (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--doc",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "runs" / "bench_ge_noise" / "report.md",
        help="the page of the table (default runs/bench_ge_noise/report.md)",
    )
    p.add_argument("--no-doc", action="store_true", help="print the table only")
    p.add_argument("--child", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1 or args.steps < 2 or args.warmup < 0 or args.crop % 8:
        raise SystemExit("need --threads >= 1, --steps >= 2, --warmup >= 0 and --crop divisible by 8.")
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(time_variants(args, args.child)))
        return 0
    start = os.getloadavg()[0]
    measured = {}
    for group in GROUPS:
        print(f"{group} variants, one process ...", file=sys.stderr, flush=True)
        flags = ["--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        flags += ["--crop", str(args.crop), "--seed", str(args.seed), "--child", group]
        command = [sys.executable, str(Path(__file__).resolve()), *flags]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        measured[group] = json.loads(out.stdout.strip().splitlines()[-1])
    section = markdown(args, measured, f"{start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(section)
    if not args.no_doc:
        update_doc(args.doc, section, *markers(args.threads))
        print(f"updated {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
