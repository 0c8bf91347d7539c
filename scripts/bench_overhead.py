"""What balancing costs per training step: the BraTS bundle's variants against plain training, in one run.

Each row is a variant of ``scripts/variants.py``, built the way the bundle builds it: a
``monai.bundle.ConfigParser`` reads ``bundles/brats_cggm.json`` (with ``gpu_paper.json`` for
``--preset gpu_paper``, then the variant's own files), applies the variant's overrides, the device
and the seed, and gives the ``network``, ``loss``, ``optimizer`` and ``balancing`` handler; the
handler binds its method to the network and the heads as when a run starts. A step is then what
the bundle's trainer and handler do in one iteration: zero_grad, forward, loss, backward, the
method's observation (the heads' step and its coefficients), its addition to the gradients (CGGM's
direction term), the modulation, the optimizer step and the restore. The rows by default:

- ``plain``: the baseline, plain loss, no heads and no handler (``method: none``);
- ``joint``: the same with the light heads observing (what ``joint`` runs in the bundle);
- ``cggm_magnitude``, ``cggm``: CGGM magnitude only and magnitude + direction, half-resolution heads;
- ``ogmge``: the bundle's OGM-GE, full-resolution heads every 4th step on one voxel in 8;
- ``cggm_level0``, ``ogmge_every1``, ``ogmge_level1``, ``ogmge_all_voxels``: the heads' level,
  cadence and voxels varied, what each costs (``--methods`` picks any variant).

A variant whose heads train every k-th step only (``observe_every > 1``) is judged on the ratio of
mean steps, since its median step is one without the heads. Targets (issue 11): 1.10x plain's
step for a method that adds to the gradients (CGGM's direction term), 1.05x for one that only
modulates them, none for one that only observes; peak memory above an idle process 1.05x.

Step time: the variants are interleaved round-robin (one step of each in turn, the order rotated
every round) so that a noisy, shared machine slows them alike; every variant has its own network,
optimizer and heads from the same seed. Each phase is timed too, the heads' step on its own. An
extra entry of the round-robin times what any full-resolution head costs at least: the task loss
(forward and backward) and the score on full-resolution logits, once per modality, with no head
at all.

Threads: one by default. On a shared CPU a second intra-op thread waits for a core whenever
another process holds one, and every parallel region waits for it: in one run with two threads
on a 2-core machine busy with one other job, joint's steps ranged from 0.33 s to 4.9 s (p10-p90).
``--threads 0`` keeps torch's default (all cores) for a machine of one's own.

Peak memory: each variant runs alone in a fresh subprocess (``--child``), beside an idle child
that only builds the baseline and the batches. On CUDA the peak is
``torch.cuda.max_memory_allocated``. On a CPU it is the child's peak RSS (VmHWM) from once
everything is built, twice: with glibc's mmap threshold fixed, so that the RSS follows the live
tensors ("live", the one checked against the target), and with glibc as it comes ("default",
which also holds some freed memory as heap). The peaks are reported absolute and above the idle
child (what training adds), with their ratios to plain's.

Results: the ratios of each configuration (preset, crop, batch, device, threads) go to
``docs/results/overhead.json`` (replacing that configuration's entry), which
``scripts/render_results.py`` puts in ``docs/results.md``; the full tables (per phase, memory) to
the section of ``--doc`` (default ``runs/bench_overhead/report.md``) between the markers of the
same settings.

    python scripts/bench_overhead.py                      # cpu_small, 64^3, batch 1, 20 steps
    python scripts/bench_overhead.py --device cuda --preset gpu_paper --crop 128
    python scripts/bench_overhead.py --suite              # cpu_small 1 and 2 threads, 150 steps; gpu_paper 20
    python scripts/bench_overhead.py --methods plain ogmge ogmge_every8   # some rows only
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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import monai
import torch
from monai.bundle import ConfigParser
from torch import nn

from cggm_seg.balancing import BalancingMethod, FeatureTap, get_score
from cggm_seg.handlers import BalancingHandler
from cggm_seg.networks import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, read_results, write_results  # noqa: E402
from variants import BUNDLES, VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the baseline every ratio is taken against
BASELINE = "plain"
#: the rows measured unless ``--methods`` names others (the baseline is always measured)
DEFAULT_ROWS: tuple[str, ...] = (
    "plain",
    "joint",
    "cggm_magnitude",
    "cggm",
    "ogmge",
    "cggm_level0",
    "ogmge_every1",
    "ogmge_level1",
    "ogmge_all_voxels",
)
#: the config files laid over the bundle for a network preset (the bundle's own is ``cpu_small``)
PRESET_FILES: dict[str, tuple[str, ...]] = {"cpu_small": (), "gpu_paper": ("gpu_paper.json",)}
PHASES: tuple[str, ...] = (
    "forward + loss",
    "heads step",
    "tracker",
    "backward",
    "direction + modulation + optimizer",
)
MEMORY_TARGET = 1.05
#: the configurations of ``--suite`` (preset, threads, measured steps), each its own section of the
#: doc: 150 steps of ``cpu_small`` (0.2-0.35 s each; 20 steps' medians moved by about 0.07 between
#: runs, 60 steps' by up to 0.02 on two threads) and 20 of ``gpu_paper`` (about 3 s each) take a
#: few minutes per variant
SUITE: tuple[tuple[str, int, int], ...] = (("cpu_small", 1, 150), ("cpu_small", 2, 150), ("gpu_paper", 1, 20))
DEFAULT_STEPS = 20
#: The extra entry of the round-robin: heads' loss and score alone (see build_loss_floor).
FLOOR = "loss_floor"
#: glibc's initial mmap threshold, fixed in the "live" memory children: freed tensors then leave
#: the RSS at once, where the default (dynamic) threshold keeps some as heap fragmentation.
MMAP_THRESHOLD = 128 * 1024
N_BATCHES = 4


@dataclass
class Built:
    """A variant's training objects, as the BraTS bundle builds them.

    Attributes:
        network: the network, on the device.
        loss: the task loss.
        optimizer: the network's optimizer.
        handler: the balancing handler, its method bound to ``network`` (``None``: no balancing).
    """

    network: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    handler: BalancingHandler | None

    @property
    def method(self) -> BalancingMethod | None:
        return None if self.handler is None else self.handler.method


def build_variant(name: str, preset: str, device: torch.device, seed: int) -> Built:
    """Variant ``name`` of the BraTS bundle at ``preset``'s size on ``device``, its network drawn
    from ``seed``, and its balancing handler bound as when a run starts."""
    variant = VARIANTS[name]
    bundle, *files = variant.config_files
    parser = ConfigParser()
    parser.read_config([bundle, *(str(BUNDLES / f) for f in PRESET_FILES[preset]), *files])
    parser.update({**variant.overrides, "device": f"$torch.device({str(device)!r})", "seed": seed})
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    handler = parser.get_parsed_content("balancing")
    if handler is not None:
        # what a SupervisedTrainer gives the handler when the run starts
        handler.build(SimpleNamespace(network=network, loss_function=loss, optimizer=optimizer))
    return Built(network, loss, optimizer, handler)


def time_target(method: BalancingMethod | None) -> float | None:
    """Issue 11's step-time target of ``method`` against plain training: 1.10x for a method that
    adds to the gradients, 1.05x for one that only modulates them, none for one that only observes."""
    if method is None or (method.magnitude.mode == "off" and not method.adds_to_gradients):
        return None
    return 1.10 if method.adds_to_gradients else 1.05


def judged_on(method: BalancingMethod | None) -> str:
    """``"mean"`` for a method whose heads train every k-th step only (its median step is one
    without them), else ``"median"``."""
    return "mean" if getattr(method, "observe_every", 1) > 1 else "median"


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


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def build_loss_floor(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n_heads: int,
    shape: torch.Size,
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """What any full-resolution head costs at least: ``n_heads`` x (loss forward + backward + score)
    on full-resolution logits, without a head. The seconds are reported as the heads' phase."""
    score_fn, sync = get_score("soft_dice"), synchronizer(device)
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


def make_step(built: Built, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """One training step of ``built``, in the order of the bundle's trainer and handler; it returns
    the seconds of each of :data:`PHASES`."""
    network, loss_fn, optimizer, method = built.network, built.loss, built.optimizer, built.method
    sync = synchronizer(device)
    heads_seconds = [0.0]
    if method is not None:
        trainer = built.handler.head_trainer
        heads_step = trainer.step

        def timed_heads_step(features: Any, target: torch.Tensor) -> Any:
            sync()
            start = time.perf_counter()
            result = heads_step(features, target)
            sync()
            heads_seconds[0] = time.perf_counter() - start
            return result

        trainer.step = timed_heads_step

    def step(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        heads_seconds[0] = 0.0  # a step without the heads' step (observe_every > 1) reports none
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if method is not None:
            method.observe(y)
        sync()
        t3 = time.perf_counter()
        if method is not None:
            method.step(optimizer, epoch=0)  # direction term, modulation, optimizer step, restore
        else:
            optimizer.step()
        sync()
        t4 = time.perf_counter()
        heads = heads_seconds[0]
        return [t1 - t0, heads, t3 - t2 - heads, t2 - t1, t4 - t3]

    return step


def profile_heads(args: argparse.Namespace, device: torch.device, steps: int = 5) -> str:
    """torch.profiler's table (self time, summed over ``steps``) of the heads' step of variant
    ``--profile-heads``: where its heads spend their time."""
    from torch.profiler import ProfilerActivity, profile

    built = build_variant(args.profile_heads, args.preset, device, args.seed)
    if built.handler is None:
        raise SystemExit(f"--profile-heads {args.profile_heads}: this variant has no heads.")
    trainer = built.handler.head_trainer
    tap = FeatureTap(built.network)
    x, y = make_batches(args.crop, args.batch, device, args.seed)[0]
    built.network(x)
    features = tap.features
    for _ in range(args.warmup):
        trainer.step(features, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(features, y)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"heads step of {args.profile_heads}, {steps} steps:\n" + prof.key_averages().table(
        sort_by=sort, row_limit=15
    )


def time_steps(
    args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, list[list[float]]], dict[str, dict[str, Any]]]:
    """Per variant, the phase seconds of each measured step (round-robin, rotated order), and what
    judges it (:func:`judged_on`, :func:`time_target`)."""
    batches = make_batches(args.crop, args.batch, device, args.seed)
    steps, rows = {}, {}
    for name in args.methods:
        built = build_variant(name, args.preset, device, args.seed)
        steps[name] = make_step(built, device)
        rows[name] = {"judged_on": judged_on(built.method), "target": time_target(built.method)}
        if name == BASELINE:
            n_heads = len(built.network.modalities)
            steps[FLOOR] = build_loss_floor(built.loss, n_heads, batches[0][1].shape, device)
    names = list(steps)
    measured: dict[str, list[list[float]]] = {m: [] for m in steps}
    for i in range(args.warmup + args.steps):
        x, y = batches[i % N_BATCHES]
        k = i % len(names)
        for name in names[k:] + names[:k]:
            phases = steps[name](x, y)
            if i >= args.warmup:
                measured[name].append(phases)
        if (i + 1) % 5 == 0:
            print(f"  round {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    return measured, rows


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
    """Peak memory (bytes) of one variant running ``--memory-steps`` steps alone ("idle": the
    baseline built, no step).

    On CUDA ``max_memory_allocated``; on a CPU the peak RSS (VmHWM), reset once everything is
    built, so that importing MONAI (a few hundred MB, briefly) does not mask the training's peak.
    """
    batches = make_batches(args.crop, args.batch, device, args.seed)
    built = build_variant(BASELINE if args.child == "idle" else args.child, args.preset, device, args.seed)
    step = None if args.child == "idle" else make_step(built, device)
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
    """Peak bytes of an idle child and of each variant's child, per allocator setting.

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
        for name in ["idle", *args.methods]:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", name, *common_flags(args)]
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            peaks[setting][name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  memory {setting} {name}: {peaks[setting][name] / 2**20:.0f} MiB", file=sys.stderr)
    return peaks


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--preset", args.preset, "--crop", str(args.crop), "--batch", str(args.batch)]
    flags += ["--device", args.device, "--seed", str(args.seed), "--memory-steps", str(args.memory_steps)]
    return flags + ["--threads", str(args.threads)]


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (q in 1..99, inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict(ratio: float, target: float) -> str:
    return f"<= {target:.2f}x: **{'met' if ratio <= target else 'missed'}**"


def summarize(
    args: argparse.Namespace,
    measured: dict[str, list[list[float]]],
    rows: dict[str, dict[str, Any]],
    peaks: dict[str, dict[str, float]],
    machine: dict[str, str],
) -> dict[str, Any]:
    """This configuration's entry of ``docs/results/overhead.json``: per variant its median, p10 and
    p90 step (ms), its ratios to the baseline's median and mean step, what it is judged on, its
    target and its live peak memory above idle against the baseline's; and the worst of those."""
    totals = {m: [sum(p) for p in steps] for m, steps in measured.items()}
    medians = {m: statistics.median(t) for m, t in totals.items()}
    means = {m: statistics.fmean(t) for m, t in totals.items()}
    live = peaks["live"]
    above = {m: live[m] - live["idle"] for m in args.methods}
    out_rows = {
        m: {
            "description": VARIANTS[m].description,
            "median_ms": 1e3 * medians[m],
            "p10_ms": 1e3 * percentile(totals[m], 10),
            "p90_ms": 1e3 * percentile(totals[m], 90),
            "ratio": medians[m] / medians[BASELINE],
            "mean_ratio": means[m] / means[BASELINE],
            **rows[m],
            "memory_ratio": above[m] / above[BASELINE],
        }
        for m in args.methods
    }
    worst = max(
        (m for m in args.methods if m != BASELINE), key=lambda m: out_rows[m]["memory_ratio"], default=None
    )
    threads = int(machine["threads"])
    title = f"`{args.preset}`, {threads} thread{'s' if threads > 1 else ''}"
    title += "".join(
        f", {text}"
        for text, shown in ((args.device, args.device != "cpu"), (f"crop {args.crop}^3", args.crop != 64),
                            (f"batch {args.batch}", args.batch != 1))
        if shown
    )  # fmt: skip
    return {
        "key": settings_key(args),
        "title": title,
        "settings": {
            "preset": args.preset,
            "crop": args.crop,
            "batch": args.batch,
            "device": args.device,
            "threads": args.threads,
            "steps": args.steps,
        },
        "source": f"measured by `{reproduce_command(args)}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({machine['cpus']} CPU cores, {machine['device']}, "
        f"load {machine['load_start']}-{machine['load_end']})",
        "baseline": BASELINE,
        "rows": out_rows,
        "memory_target": MEMORY_TARGET,
        "memory_worst": None if worst is None else {"row": worst, "ratio": out_rows[worst]["memory_ratio"]},
    }


def write_configuration(path: Path, configuration: dict[str, Any]) -> None:
    """Put ``configuration`` into the results file ``path``, replacing the entry of the same key."""
    configurations = read_results(path)["configurations"] if path.is_file() else []
    keys = [c["key"] for c in configurations]
    if configuration["key"] in keys:
        configurations[keys.index(configuration["key"])] = configuration
    else:
        configurations.append(configuration)
    sources = "; ".join(dict.fromkeys(c["source"] for c in configurations))
    write_results(path, {"benchmark": "bench_overhead", "source": sources, "configurations": configurations})


def markdown(args: argparse.Namespace, summary: dict[str, Any], measured: dict[str, list[list[float]]],
             peaks: dict[str, dict[str, float]], machine: dict[str, str]) -> str:  # fmt: skip
    rows = summary["rows"]
    if args.device == "cuda":
        memory_kind = "`torch.cuda.max_memory_allocated`"
    else:
        memory_kind = (
            "peak RSS (VmHWM, reset once everything is built); *live*: glibc's mmap threshold fixed at "
            f"{MMAP_THRESHOLD // 1024} KiB (`MALLOC_MMAP_THRESHOLD_`), so that freed tensors leave the RSS "
            "at once and the peak follows the live tensors; *default*: glibc as it comes, whose dynamic "
            "threshold keeps some freed blocks as heap (this peak varies by a few tens of MiB between "
            "identical runs)"
        )
    preset_files = "".join(f" + `{f}`" for f in PRESET_FILES[args.preset])
    lines = [
        markers(args)[0],
        f"Machine: {machine['cpus']} CPU cores ({platform.machine()}), {machine['device']}, torch "
        f"{torch.__version__}, MONAI {monai.__version__}, intra-op threads: {machine['threads']}; "
        f"load average (1 min) {machine['load_start']} at the start, {machine['load_end']} at the end "
        "(the machine is shared).",
        "",
        f"Settings: `{args.preset}` network (`bundles/brats_cggm.json`{preset_files}), crop {args.crop}^3, "
        f"batch {args.batch}; network, loss, optimizer, heads and balancing handler as the bundle builds "
        f"them for each variant (`scripts/variants.py`); {args.warmup} warm-up and {args.steps} measured "
        f"steps per variant, round-robin. Memory: {memory_kind}; one fresh process per variant, "
        f"{args.memory_steps} steps. Variants: "
        + "; ".join(f"`{m}`: {VARIANTS[m].description}" for m in args.methods)
        + ".",
        "",
        f"| variant | median step (ms) | p10 | p90 | ratio to {BASELINE} | ratio of mean steps | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, row in rows.items():
        judged = row["mean_ratio"] if row["judged_on"] == "mean" else row["ratio"]
        target = "" if row["target"] is None else verdict(judged, row["target"])
        target += " (mean)" if target and row["judged_on"] == "mean" else ""
        lines.append(
            f"| {m} | {row['median_ms']:.0f} | {row['p10_ms']:.0f} | {row['p90_ms']:.0f} | "
            f"{row['ratio']:.3f} | {row['mean_ratio']:.3f} | {target} |"
        )
    lines += [
        "",
        "Median milliseconds per phase (the phases' medians need not add up to the step's):",
        "",
        "| variant | " + " | ".join(PHASES) + " |",
        "|---" * (len(PHASES) + 1) + "|",
    ]
    for m in rows:
        cells = [f"{1e3 * statistics.median(p[i] for p in measured[m]):.1f}" for i in range(len(PHASES))]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    floor = statistics.median(sum(p) for p in measured[FLOOR])
    baseline = rows[BASELINE]["median_ms"] / 1e3
    lines += [
        "",
        "Floor of any full-resolution head: one x (task loss forward + backward + soft-Dice score) per "
        "modality on full-resolution logits, no head at all, in the same round-robin (the heads step's "
        f"floor): median {1e3 * floor:.1f} ms per step, {floor / baseline:.1%} of {BASELINE}'s median step.",
        "",
    ]
    live = peaks["live"]
    header = "| variant | peak (MiB) | above idle | ratio, above idle | ratio, peak | target (above idle) |"
    if "default" in peaks:
        header += " default: peak | above idle | ratio, above idle |"
        header = header.replace("| peak (MiB) |", "| live: peak (MiB) |")
    lines += [
        f"Peak memory; the idle process (torch imported, {BASELINE} and batches built): "
        + ", ".join(f"{s} {p['idle'] / 2**20:.0f} MiB" for s, p in peaks.items())
        + ".",
        "",
        header,
        "|---" * header.count(" | ") + "|---|",
    ]
    for m, row in rows.items():
        target = verdict(row["memory_ratio"], MEMORY_TARGET) if m != BASELINE else ""
        above = live[m] - live["idle"]
        line = (
            f"| {m} | {live[m] / 2**20:.0f} | {above / 2**20:.0f} | {row['memory_ratio']:.3f} | "
            f"{live[m] / live[BASELINE]:.3f} | {target} |"
        )
        if "default" in peaks:
            default = peaks["default"]
            d_above = default[m] - default["idle"]
            d_baseline = default[BASELINE] - default["idle"]
            line += f" {default[m] / 2**20:.0f} | {d_above / 2**20:.0f} | {d_above / d_baseline:.3f} |"
        lines.append(line)
    lines += ["", f"Reproduce: `{reproduce_command(args)}`", markers(args)[1]]
    return "\n".join(lines)


def reproduce_flags(args: argparse.Namespace) -> list[str]:
    defaults = {**vars(parser().parse_args([])), "steps": DEFAULT_STEPS}
    flags = []
    for key in ("preset", "crop", "batch", "steps", "warmup", "threads", "device", "memory_steps", "seed"):
        value = getattr(args, key)
        if value != defaults[key]:
            flags.append(f"--{key.replace('_', '-')} {value}")
    if args.methods != list(DEFAULT_ROWS):
        flags.append("--methods " + " ".join(args.methods))
    return flags


def reproduce_command(args: argparse.Namespace) -> str:
    return " ".join(["python scripts/bench_overhead.py", *reproduce_flags(args)])


def settings_key(args: argparse.Namespace) -> str:
    """What tells one configuration from another: preset, crop, batch, device and thread count (and
    the set of rows, where ``--methods`` is not the default), so that runs of other settings keep
    their own section and results entry."""
    key = f"{args.preset} crop={args.crop} batch={args.batch} device={args.device} threads={args.threads}"
    if args.methods != list(DEFAULT_ROWS):  # another set of rows: a configuration of its own
        key += " methods=" + ",".join(args.methods)
    return key


def markers(args: argparse.Namespace) -> tuple[str, str]:
    """The begin and end markers of these settings' section (:func:`settings_key`)."""
    key = settings_key(args)
    return (
        f"<!-- bench_overhead:begin {key} (written by scripts/bench_overhead.py) -->",
        f"<!-- bench_overhead:end {key} -->",
    )


def update_doc(doc: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``doc`` by ``section`` (markers included),
    or append ``section`` where they are not (creating the file)."""
    text = doc.read_text() if doc.exists() else "# Benchmark reports\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name}: {v.description}" for name, v in VARIANTS.items())
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="variants (scripts/variants.py):\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="cpu_small", choices=list(PRESET_FILES))
    p.add_argument("--crop", type=int, default=64, help="cubic crop edge in voxels (default 64)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"measured steps per variant (default {DEFAULT_STEPS}; --suite: each configuration's own)",
    )
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first (default 3)")
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
        "--suite",
        action="store_true",
        help="run " + ", ".join(f"{p} on {t} thread(s), {n} steps" for p, t, n in SUITE) + " in turn",
    )
    p.add_argument(
        "--results", type=Path, default=RESULTS / "overhead.json",
        help="the results file; this configuration's entry is replaced (default docs/results/overhead.json)",
    )  # fmt: skip
    p.add_argument(
        "--doc", type=Path, default=ROOT / "runs" / "bench_overhead" / "report.md",
        help="the full tables' page (default runs/bench_overhead/report.md)",
    )  # fmt: skip
    p.add_argument("--no-doc", action="store_true", help="print the tables only: write no file")
    p.add_argument(
        "--profile-heads", nargs="?", const="cggm", choices=list(VARIANTS), metavar="VARIANT",
        help="print a profile of the variant's heads' step only (default cggm) and write nothing",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_ROWS), metavar="VARIANT",
        help=f"the rows to measure ({BASELINE} is always measured); default: " + ", ".join(DEFAULT_ROWS),
    )  # fmt: skip
    p.add_argument("--child", choices=["idle", *VARIANTS], help=argparse.SUPPRESS)
    return p


def run_suite(args: argparse.Namespace) -> int:
    """Every configuration of :data:`SUITE` in turn, each in its own process (a fresh thread pool),
    each writing its section and results entry; the other flags (crop, rows, ...) apply to all,
    ``--steps`` too when it is given."""
    for preset, threads, steps in SUITE:
        flags = [f for f in reproduce_flags(args) if not f.startswith(("--preset", "--threads", "--steps"))]
        command = [sys.executable, str(Path(__file__).resolve()), "--preset", preset]
        command += ["--threads", str(threads), "--steps", str(args.steps or steps)]
        command += [part for flag in flags for part in flag.split(" ")]
        command += ["--doc", str(args.doc), "--results", str(args.results)]
        command += ["--no-doc"] if args.no_doc else []
        print(f"suite: {preset}, {threads} thread(s)", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.suite:
        return run_suite(args)
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.methods = [BASELINE, *(m for m in dict.fromkeys(args.methods) if m != BASELINE)]
    if args.steps < 2 or args.warmup < 0 or args.memory_steps < 1 or args.batch < 1:
        raise SystemExit("need --steps >= 2, --warmup >= 0, --memory-steps >= 1 and --batch >= 1.")
    divisor = 2 ** (len(PRESETS[args.preset]["channels"]) - 1)
    if args.crop % divisor:
        raise SystemExit(
            f"--crop must be divisible by {divisor} for the {args.preset} preset, got {args.crop}."
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
    print(f"timing {len(args.methods)} variants round-robin ...", file=sys.stderr, flush=True)
    measured, rows = time_steps(args, device)
    print("peak memory, one process per variant ...", file=sys.stderr, flush=True)
    peaks = measure_memory(args)
    machine = {
        "cpus": str(os.cpu_count()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used",
        "threads": str(torch.get_num_threads()),
        "load_start": f"{load_start:.2f}",
        "load_end": f"{os.getloadavg()[0]:.2f}",
    }
    summary = summarize(args, measured, rows, peaks, machine)
    section = markdown(args, summary, measured, peaks, machine)
    print(section)
    if not args.no_doc:
        write_configuration(args.results, summary)
        update_doc(args.doc, section, *markers(args))
        print(f"updated {args.results} and {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
