"""What balancing costs per training step: joint training vs CGGM vs OGM-GE, in one run.

The methods train the same :class:`~cggm_seg.networks.MultiEncoderSegNet` (same preset, same
seed, same batches) with SGD (momentum 0.9; the methods' cost does not depend on the optimizer):

- ``joint``: plain task loss, no heads;
- ``cggm_magnitude``: CGGM, magnitude ``grad``, direction ``off``;
- ``cggm_full``: CGGM, magnitude ``grad``, direction ``gradient``;
- ``ogmge``: OGM-GE (GE noise on, inside its window);
- ``ogmge_level0_every4`` / ``_every8`` (opt-in, ``--methods``): OGM-GE with full-resolution heads
  that train (and recompute k) every 4th / 8th step only (``observe_every``); the medians mix the
  steps with and without the heads, so these rows are judged on the ratio of mean steps (as is
  ``ogmge_sublattice_every4``);
- ``cggm_full_every4`` (opt-in): CGGM whose heads train, B is recomputed and the direction term is
  added every 4th step only (``observe_every=4``; B scales every step), judged likewise;
- ``cggm_magnitude_level0`` / ``ogmge_level0``: CGGM magnitude only and OGM-GE with
  full-resolution heads (``level=0``), the heads before ``--head-level`` (default
  :data:`~cggm_seg.networks.DEFAULT_LEVEL`) made them predict at a coarser level: what the coarse
  heads save, in the same run (the BraTS bundle keeps full-resolution heads for OGM-GE, see
  ``docs/benchmarks.md``).
- ``ogmge_sublattice`` / ``ogmge_sublattice_every4``: OGM-GE with full-resolution heads trained
  and scored on one voxel in 8 of the label per step (``HeadTrainer(sublattice=True)``), every step
  / every 4th step (the BraTS bundle's);
- ``cggm_magnitude_sublattice`` / ``cggm_full_sublattice``: CGGM's heads (``--head-level``, half
  resolution by default) trained and scored on one voxel in 8 of their grid per step;
  ``ogmge_level1_sublattice``: OGM-GE's half-resolution heads likewise.

Step time: the methods are interleaved round-robin (one step of each in turn, the order rotated
every round) so that a noisy, shared machine slows them alike; every method has its own model and
optimizers. A step is everything a training iteration does, in the handlers' order: zero_grad,
forward, loss, backward, then (balanced methods) the heads' step and the tracker, the direction
term (CGGM adds its gradient to the final layer's), modulation, and the optimizer step. Each phase
is timed too, the heads' step on its own. A fifth entry of the round-robin times what any
full-resolution head costs at least: the task loss (forward and backward) and the score on
full-resolution logits, once per modality, with no head at all.

Threads: one by default. On a shared CPU a second intra-op thread waits for a core whenever
another process holds one, and every parallel region waits for it: in one run with two threads
on a 2-core machine busy with one other job, joint's steps ranged from 0.33 s to 4.9 s (p10-p90).
``--threads 0`` keeps torch's default (all cores) for a machine of one's own.

Peak memory: each method runs alone in a fresh subprocess (``--child``), beside an idle child
that only builds the model and the batches. On CUDA the peak is ``torch.cuda.max_memory_allocated``.
On a CPU it is the child's peak RSS (VmHWM) from once the model is built, twice: with glibc's
mmap threshold fixed, so that the RSS follows the live tensors ("live", the one checked against
the target), and with glibc as it comes ("default", which also holds some freed memory as heap).
The peaks are reported absolute and above the idle child (what training adds), with their ratios
to joint.

The tables replace the section of ``--doc`` between the ``bench_overhead`` markers of the same
settings (preset, crop, batch, device, threads), or are appended.

    python scripts/bench_overhead.py                      # cpu_small, 64^3, batch 1, 20 steps
    python scripts/bench_overhead.py --device cuda --preset gpu_paper --crop 128
    python scripts/bench_overhead.py --suite              # cpu_small 1 and 2 threads, 150 steps; gpu_paper 20
    python scripts/bench_overhead.py --methods joint ogmge ogmge_level0_every8   # some rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import torch
from monai.losses import DiceLoss

from cggm_seg.balancing import CGGM, OGMGE, FeatureTap, HeadStep, HeadTrainer, get_score
from cggm_seg.networks import DEFAULT_LEVEL, PRESETS, MultiEncoderSegNet, make_heads

METHODS: dict[str, str] = {
    "joint": "joint (plain loss, no heads)",
    "cggm_magnitude": "CGGM magnitude only (grad, direction off)",
    "cggm_full": "CGGM magnitude + direction (grad, gradient)",
    "ogmge": "OGM-GE (alpha 0.8, GE noise)",
    "cggm_magnitude_level0": "CGGM magnitude only, full-resolution heads (level 0)",
    "ogmge_level0": "OGM-GE, full-resolution heads (level 0)",
    "ogmge_level0_every4": "OGM-GE, full-resolution heads trained every 4th step (observe_every=4)",
    "ogmge_level0_every8": "OGM-GE, full-resolution heads trained every 8th step (observe_every=8)",
    "cggm_full_every4": "CGGM magnitude + direction, heads, B and direction every 4th step (observe_every=4)",
    "ogmge_sublattice": "OGM-GE, full-resolution heads on one voxel in 8 (sublattice)",
    "ogmge_sublattice_every4": (
        "OGM-GE, full-resolution heads on one voxel in 8, every 4th step (sublattice, observe_every=4)"
    ),
    "cggm_magnitude_sublattice": "CGGM magnitude only, heads on one voxel in 8 of their grid (sublattice)",
    "cggm_full_sublattice": "CGGM magnitude + direction, heads on one voxel in 8 of their grid (sublattice)",
    "ogmge_level1_sublattice": "OGM-GE, half-resolution heads on one voxel in 8 of their grid (sublattice)",
}
#: rows measured only when asked for (``--methods``): variants measured in earlier suites and not
#: adopted (``docs/benchmarks.md`` keeps their figures)
OPT_IN: tuple[str, ...] = ("ogmge_level0_every4", "ogmge_level0_every8", "cggm_full_every4")
PHASES: tuple[str, ...] = (
    "forward + loss",
    "heads step",
    "tracker",
    "backward",
    "direction + modulation + optimizer",
)
#: Targets: ratio of the median step time / of the peak memory to joint's.
TIME_TARGETS: dict[str, float] = {
    "cggm_magnitude": 1.05,
    "cggm_full": 1.10,
    "ogmge": 1.05,
    "ogmge_level0": 1.05,
    "ogmge_level0_every4": 1.05,
    "ogmge_level0_every8": 1.05,
    "cggm_full_every4": 1.10,
    "ogmge_sublattice": 1.05,
    "ogmge_sublattice_every4": 1.05,
    "cggm_magnitude_sublattice": 1.05,
    "cggm_full_sublattice": 1.10,
    "ogmge_level1_sublattice": 1.05,
}
#: methods whose steps differ by design (the heads train every k-th step): judged by the ratio of
#: mean steps, since the median step is one without the heads
AMORTIZED: tuple[str, ...] = tuple(m for m in METHODS if "_every" in m)
DEFAULT_METHODS: list[str] = [m for m in METHODS if m not in OPT_IN]
MEMORY_TARGET = 1.05
#: the configurations of ``--suite`` (preset, threads, measured steps), each its own section of the
#: doc: 150 steps of ``cpu_small`` (0.2-0.35 s each; 20 steps' medians moved by about 0.07 between
#: runs, 60 steps' by up to 0.02 on two threads) and 20 of ``gpu_paper`` (about 3 s each) take a
#: few minutes per method
SUITE: tuple[tuple[str, int, int], ...] = (("cpu_small", 1, 150), ("cpu_small", 2, 150), ("gpu_paper", 1, 20))
DEFAULT_STEPS = 20
#: The extra entry of the round-robin: heads' loss and score alone (see build_loss_floor).
FLOOR = "loss_floor"
#: glibc's initial mmap threshold, fixed in the "live" memory children: freed tensors then leave
#: the RSS at once, where the default (dynamic) threshold keeps some as heap fragmentation.
MMAP_THRESHOLD = 128 * 1024
N_BATCHES = 4


def make_batches(
    crop: int, batch: int, device: torch.device, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``N_BATCHES`` synthetic (image ``B x 4 x crop^3``, nested region labels ``B x 3 x crop^3``) pairs:
    a sphere per case, brighter in t1ce and FLAIR, on noise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(crop, dtype=torch.float32)] * 3, indexing="ij"))
    batches = []
    for _ in range(N_BATCHES):
        centre = crop * (0.3 + 0.4 * torch.rand(batch, 3, 1, 1, 1, generator=g))
        dist = (grid.unsqueeze(0) - centre).square().sum(1, keepdim=True).sqrt()  # B x 1 x crop^3
        radius = crop / 6
        label = torch.cat([dist < 0.6 * radius, dist < radius, dist < 0.3 * radius], dim=1).float()
        image = torch.randn(batch, 4, crop, crop, crop, generator=g)
        image[:, 1:2] += 2.0 * label[:, 2:3]
        image[:, 3:4] += 1.5 * label[:, 1:2]
        batches.append((image.to(device), label.to(device)))
    return batches


def make_loss() -> DiceLoss:
    """The model-zoo BraTS bundle's loss."""
    return DiceLoss(smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True, sigmoid=True)


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def build_loss_floor(
    n_heads: int, shape: torch.Size, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """What any full-resolution head costs at least: ``n_heads`` x (loss forward + backward + score)
    on full-resolution logits, without a head. The seconds are reported as the heads' phase."""
    loss_fn, score_fn, sync = make_loss(), get_score("soft_dice"), synchronizer(device)
    logits = [torch.randn(shape, device=device, requires_grad=True) for _ in range(n_heads)]

    def step(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        sync()
        t0 = time.perf_counter()
        for z in logits:
            z.grad = None
            loss_fn(z, y).backward()
            score_fn(z.detach(), y)
        sync()
        return [0.0, time.perf_counter() - t0, 0.0, 0.0, 0.0]

    return step


def head_level_of(method: str, head_level: int) -> int:
    """The level of ``method``'s heads: 0 for the ``_level0`` rows and OGM-GE's ``ogmge_sublattice``
    rows (the bundle's full-resolution heads), 1 for ``_level1`` rows, ``head_level`` otherwise."""
    if "_level0" in method or method.startswith("ogmge_sublattice"):
        return 0
    return 1 if "_level1" in method else head_level


def build(
    method: str, preset: str, device: torch.device, seed: int, level: int = DEFAULT_LEVEL
) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """A training step of ``method`` on its own model and optimizer; it returns the seconds of each
    phase. ``level``: the level the heads predict at (``*_level0`` methods: 0, full resolution)."""
    torch.manual_seed(seed)
    model = MultiEncoderSegNet.from_preset(preset, cpu_fast_paths=preset == "cpu_small").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    loss_fn = make_loss()
    sync = synchronizer(device)
    balance: Callable[[torch.Tensor, torch.Tensor], Any] | None = None
    update: Callable[[], None] = optimizer.step
    heads_seconds = [0.0]
    if method != "joint":
        sublattice = "_sublattice" in method
        level = head_level_of(method, level)
        heads = make_heads("segmentation", model, level=level).to(device)
        score = "region_true_class_probability" if method.startswith("ogmge") else "soft_dice"
        trainer = HeadTrainer(
            heads,
            loss_fn,
            torch.optim.SGD(heads.parameters(), lr=1e-2, momentum=0.9),
            score,
            sublattice=sublattice,
        )
        heads_step = trainer.step

        def timed_heads_step(features: Any, target: torch.Tensor) -> HeadStep:
            sync()
            start = time.perf_counter()
            result = heads_step(features, target)
            sync()
            heads_seconds[0] = time.perf_counter() - start
            return result

        trainer.step = timed_heads_step
        every = int(method.rsplit("_every", 1)[1]) if "_every" in method else 1
        if method.startswith("ogmge"):
            ogm = OGMGE(model, trainer, alpha=0.8, seed=seed, observe_every=every)

            def balance(loss: torch.Tensor, y: torch.Tensor) -> None:
                ogm.observe(y)

            def update() -> None:
                ogm.step(optimizer, epoch=0)

        else:
            direction = "off" if method.startswith("cggm_magnitude") else "gradient"
            cggm = CGGM(
                model, trainer, loss_fn, magnitude="grad", direction=direction, lam=0.1, observe_every=every
            )
            balance = cggm.training_loss

            def update() -> None:
                cggm.step(optimizer)

    def step(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        # the handlers' order: the heads' step and the method after the network's backward
        heads_seconds[0] = 0.0  # a step without the heads' step (observe_every > 1) reports none
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if balance is not None:
            balance(loss, y)
        sync()
        t3 = time.perf_counter()
        update()
        sync()
        t4 = time.perf_counter()
        heads = heads_seconds[0]
        return [t1 - t0, heads, t3 - t2 - heads, t2 - t1, t4 - t3]

    return step


def profile_heads(args: argparse.Namespace, device: torch.device, steps: int = 5) -> str:
    """torch.profiler's table (self time, summed over ``steps``) of the heads' step of CGGM: where a
    full-resolution head spends its time."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(args.seed)
    model = MultiEncoderSegNet.from_preset(args.preset, cpu_fast_paths=args.preset == "cpu_small").to(device)
    heads = make_heads("segmentation", model, level=args.head_level).to(device)
    trainer = HeadTrainer(heads, make_loss(), torch.optim.SGD(heads.parameters(), lr=1e-2, momentum=0.9))
    tap = FeatureTap(model)
    x, y = make_batches(args.crop, args.batch, device, args.seed)[0]
    model(x)
    features = tap.features
    for _ in range(args.warmup):
        trainer.step(features, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(features, y)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"heads step, {steps} steps:\n" + prof.key_averages().table(sort_by=sort, row_limit=15)


def time_steps(args: argparse.Namespace, device: torch.device) -> dict[str, list[list[float]]]:
    """Per method, the phase seconds of each measured step (round-robin, rotated order)."""
    batches = make_batches(args.crop, args.batch, device, args.seed)
    steps = {m: build(m, args.preset, device, args.seed, args.head_level) for m in args.methods}
    n_heads = len(MultiEncoderSegNet.from_preset(args.preset).modalities)
    steps[FLOOR] = build_loss_floor(n_heads, batches[0][1].shape, device)
    names = list(steps)
    measured: dict[str, list[list[float]]] = {m: [] for m in steps}
    for i in range(args.warmup + args.steps):
        x, y = batches[i % N_BATCHES]
        k = i % len(names)
        for method in names[k:] + names[:k]:
            phases = steps[method](x, y)
            if i >= args.warmup:
                measured[method].append(phases)
        if (i + 1) % 5 == 0:
            print(f"  round {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    return measured


def _status_bytes(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(args: argparse.Namespace, device: torch.device) -> float:
    """Peak memory (bytes) of one method running ``--memory-steps`` steps alone ("idle": no step).

    On CUDA ``max_memory_allocated``; on a CPU the peak RSS (VmHWM), reset once everything is
    built, so that importing MONAI (a few hundred MB, briefly) does not mask the training's peak.
    """
    batches = make_batches(args.crop, args.batch, device, args.seed)
    step = None
    if args.child == "idle":
        torch.manual_seed(args.seed)
        MultiEncoderSegNet.from_preset(args.preset, cpu_fast_paths=args.preset == "cpu_small").to(device)
    else:
        step = build(args.child, args.preset, device, args.seed, args.head_level)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    for i in range(args.memory_steps if step is not None else 0):
        step(*batches[i % N_BATCHES])
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return _status_bytes("VmHWM")


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Peak bytes of an idle child and of each method's child, per allocator setting.

    ``"live"``: glibc's mmap threshold fixed (:data:`MMAP_THRESHOLD`), so the RSS peak follows the
    live tensors; ``"default"``: glibc as it comes (CPU only; CUDA reports ``"live"`` alone).
    """
    settings = {"live": {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}}
    if args.device == "cpu":
        settings["default"] = {}
    peaks: dict[str, dict[str, float]] = {}
    for setting, extra_env in settings.items():
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | extra_env
        peaks[setting] = {}
        for method in ["idle", *args.methods]:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", method, *common_flags(args)]
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            peaks[setting][method] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  memory {setting} {method}: {peaks[setting][method] / 2**20:.0f} MiB", file=sys.stderr)
    return peaks


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--preset", args.preset, "--crop", str(args.crop), "--batch", str(args.batch)]
    flags += ["--device", args.device, "--seed", str(args.seed), "--memory-steps", str(args.memory_steps)]
    return flags + ["--threads", str(args.threads), "--head-level", str(args.head_level)]


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (q in 1..99, inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict(ratio: float, target: float) -> str:
    return f"<= {target:.2f}x: **{'met' if ratio <= target else 'missed'}**"


def markdown(
    args: argparse.Namespace,
    measured: dict[str, list[list[float]]],
    peaks: dict[str, dict[str, float]],
    machine: dict[str, str],
) -> str:
    totals = {m: [sum(p) for p in steps] for m, steps in measured.items()}
    medians = {m: statistics.median(t) for m, t in totals.items()}
    means = {m: statistics.fmean(t) for m, t in totals.items()}
    n_heads = len(MultiEncoderSegNet.from_preset(args.preset).modalities)
    if args.device == "cuda":
        memory_kind = "`torch.cuda.max_memory_allocated`"
    else:
        memory_kind = (
            "peak RSS (VmHWM, reset once the model is built); *live*: glibc's mmap threshold fixed at "
            f"{MMAP_THRESHOLD // 1024} KiB (`MALLOC_MMAP_THRESHOLD_`), so that freed tensors leave the RSS "
            "at once and the peak follows the live tensors; *default*: glibc as it comes, whose dynamic "
            "threshold keeps some freed blocks as heap (this peak varies by a few tens of MiB between "
            "identical runs)"
        )
    lines = [
        markers(args)[0],
        f"Machine: {machine['cpus']} CPU cores ({platform.machine()}), {machine['device']}, torch "
        f"{torch.__version__}, MONAI {monai.__version__}, intra-op threads: {machine['threads']}; "
        f"load average (1 min) {machine['load_start']} at the start, {machine['load_end']} at the end "
        "(the machine is shared).",
        "",
        f"Settings: `{args.preset}` MultiEncoderSegNet, crop {args.crop}^3, batch {args.batch}, SGD "
        "(lr 0.01, momentum 0.9) for the model and the heads, DiceLoss (sigmoid, squared), heads at "
        f"level {args.head_level} (the toolkit's default: {DEFAULT_LEVEL}; 0 is full resolution), "
        f"{args.warmup} warm-up and {args.steps} measured steps per method, round-robin. Memory: "
        f"{memory_kind}; one fresh process per method, {args.memory_steps} steps.",
        "",
        "| method | median step (ms) | p10 | p90 | ratio to joint | ratio of mean steps | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, label in ((m, METHODS[m]) for m in args.methods):
        ratio, mean_ratio = medians[m] / medians["joint"], means[m] / means["joint"]
        judged = mean_ratio if m in AMORTIZED else ratio
        target = verdict(judged, TIME_TARGETS[m]) if m in TIME_TARGETS else ""
        target += " (mean)" if target and m in AMORTIZED else ""
        lines.append(
            f"| {label} | {1e3 * medians[m]:.0f} | {1e3 * percentile(totals[m], 10):.0f} | "
            f"{1e3 * percentile(totals[m], 90):.0f} | {ratio:.3f} | {mean_ratio:.3f} | {target} |"
        )
    lines += [
        "",
        "Median milliseconds per phase (the phases' medians need not add up to the step's):",
        "",
        "| method | " + " | ".join(PHASES) + " |",
        "|---" * (len(PHASES) + 1) + "|",
    ]
    for m, label in ((m, METHODS[m]) for m in args.methods):
        cells = [f"{1e3 * statistics.median(p[i] for p in measured[m]):.1f}" for i in range(len(PHASES))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Floor of any full-resolution head: {n_heads} x (task loss forward + backward + soft-Dice score) "
        "on full-resolution logits, no head at all, in the same round-robin (the heads step's floor): "
        f"median {1e3 * medians[FLOOR]:.1f} ms per step, {medians[FLOOR] / medians['joint']:.1%} of joint's "
        "median step.",
        "",
    ]
    live = peaks["live"]
    above = {m: live[m] - live["idle"] for m in args.methods}
    header = "| method | peak (MiB) | above idle | ratio, above idle | ratio, peak | target (above idle) |"
    if "default" in peaks:
        header += " default: peak | above idle | ratio, above idle |"
        header = header.replace("| peak (MiB) |", "| live: peak (MiB) |")
    lines += [
        "Peak memory; the idle process (torch imported, model and batches built): "
        + ", ".join(f"{s} {p['idle'] / 2**20:.0f} MiB" for s, p in peaks.items())
        + ".",
        "",
        header,
        "|---" * header.count(" | ") + "|---|",
    ]
    for m, label in ((m, METHODS[m]) for m in args.methods):
        ratio = above[m] / above["joint"]
        target = verdict(ratio, MEMORY_TARGET) if m != "joint" else ""
        row = (
            f"| {label} | {live[m] / 2**20:.0f} | {above[m] / 2**20:.0f} | {ratio:.3f} | "
            f"{live[m] / live['joint']:.3f} | {target} |"
        )
        if "default" in peaks:
            default = peaks["default"]
            d_above = default[m] - default["idle"]
            d_joint = default["joint"] - default["idle"]
            row += f" {default[m] / 2**20:.0f} | {d_above / 2**20:.0f} | {d_above / d_joint:.3f} |"
        lines.append(row)
    lines += [
        "",
        "Reproduce: `" + " ".join(["python scripts/bench_overhead.py", *reproduce_flags(args)]) + "`",
        markers(args)[1],
    ]
    return "\n".join(lines)


def reproduce_flags(args: argparse.Namespace) -> list[str]:
    defaults = {**vars(parser().parse_args([])), "steps": DEFAULT_STEPS}
    flags = []
    keys = ("preset", "crop", "batch", "steps", "warmup", "threads", "device", "memory_steps", "seed")
    keys += ("head_level",)
    for key in keys:
        value = getattr(args, key)
        if value != defaults[key]:
            flags.append(f"--{key.replace('_', '-')} {value}")
    if args.methods != DEFAULT_METHODS:
        flags.append("--methods " + " ".join(args.methods))
    return flags


def markers(args: argparse.Namespace) -> tuple[str, str]:
    """The begin and end markers of these settings' section: one section per preset, crop, batch,
    device and thread count (and set of rows, where ``--methods`` is not the default), so that runs
    of other settings do not replace it."""
    key = f"{args.preset} crop={args.crop} batch={args.batch} device={args.device} threads={args.threads}"
    if args.methods != DEFAULT_METHODS:  # another set of rows: a section of its own
        key += " methods=" + ",".join(args.methods)
    return (
        f"<!-- bench_overhead:begin {key} (written by scripts/bench_overhead.py) -->",
        f"<!-- bench_overhead:end {key} -->",
    )


def update_doc(doc: Path, section: str, begin: str, end: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu_small", choices=sorted(PRESETS))
    p.add_argument("--crop", type=int, default=64, help="cubic crop edge in voxels (default 64)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"measured steps per method (default {DEFAULT_STEPS}; --suite: each configuration's own)",
    )
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per method first (default 3)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on a CPU; 0 keeps torch's default (default 1, see the module docstring)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--memory-steps", type=int, default=5, help="steps of each memory child (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--head-level",
        type=int,
        default=DEFAULT_LEVEL,
        help=f"level the heads predict at (default {DEFAULT_LEVEL}, the toolkit's; 0: full resolution)",
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="run " + ", ".join(f"{p} on {t} thread(s), {n} steps" for p, t, n in SUITE) + " in turn",
    )
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true", help="print the tables only")
    p.add_argument(
        "--profile-heads", action="store_true", help="print a profile of the heads' step only (no doc)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=DEFAULT_METHODS,
        metavar="METHOD",
        help="the rows to measure, of " + ", ".join(METHODS) + " (joint is always measured); default: "
        "all but " + ", ".join(OPT_IN),
    )
    p.add_argument("--child", choices=["idle", *METHODS], help=argparse.SUPPRESS)
    return p


def run_suite(args: argparse.Namespace) -> int:
    """Every configuration of :data:`SUITE` in turn, each in its own process (a fresh thread pool),
    each writing its section; the other flags (crop, head level, ...) apply to all, ``--steps``
    too when it is given."""
    for preset, threads, steps in SUITE:
        flags = [f for f in reproduce_flags(args) if not f.startswith(("--preset", "--threads", "--steps"))]
        command = [sys.executable, str(Path(__file__).resolve()), "--preset", preset]
        command += ["--threads", str(threads), "--steps", str(args.steps or steps)]
        command += [part for flag in flags for part in flag.split(" ")]
        command += ["--doc", str(args.doc)] + (["--no-doc"] if args.no_doc else [])
        print(f"suite: {preset}, {threads} thread(s)", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.suite:
        return run_suite(args)
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.methods = ["joint", *(m for m in dict.fromkeys(args.methods) if m != "joint")]
    if args.steps < 2 or args.warmup < 0 or args.memory_steps < 1 or args.batch < 1:
        raise SystemExit("need --steps >= 2, --warmup >= 0, --memory-steps >= 1 and --batch >= 1.")
    divisor = 2 ** (len(PRESETS[args.preset]["channels"]) - 1)
    if args.crop % divisor:
        raise SystemExit(
            f"--crop must be divisible by {divisor} for the {args.preset} preset, got {args.crop}."
        )
    for m in (m for m in args.methods if "_sublattice" in m):
        level = head_level_of(m, args.head_level)
        if args.crop % 2 ** (level + 1):
            raise SystemExit(
                f"{m} trains heads at level {level} on a sub-lattice, which needs a crop divisible by "
                f"{2 ** (level + 1)}, got {args.crop}; pick another --crop or --head-level, or other "
                "--methods."
            )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile_heads:
        print(profile_heads(args, device))
        return 0
    if args.child:
        print(json.dumps(child(args, device)))
        return 0

    load_start = os.getloadavg()[0]
    print(f"timing {len(args.methods)} methods round-robin ...", file=sys.stderr, flush=True)
    measured = time_steps(args, device)
    print("peak memory, one process per method ...", file=sys.stderr, flush=True)
    peaks = measure_memory(args)
    machine = {
        "cpus": str(os.cpu_count()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used",
        "threads": str(torch.get_num_threads()),
        "load_start": f"{load_start:.2f}",
        "load_end": f"{os.getloadavg()[0]:.2f}",
    }
    section = markdown(args, measured, peaks, machine)
    print(section)
    if not args.no_doc:
        update_doc(args.doc, section, *markers(args))
        print(f"updated {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
