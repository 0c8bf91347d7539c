"""Does balancing balance? The BraTS bundle's variants, the same data, split and budget, several seeds.

Each run is the BraTS bundle itself (``python -m monai.bundle run --config_file
bundles/brats_cggm.json ...``) in one of the variants of ``scripts/variants.py`` (its config files
and overrides; ``--help`` lists them), trained and then evaluated on the held-out test split with
the missing-sequence audit, so what is measured here is exactly what a user runs.

Every run uses one fixed split (``--split-seed``) and the same epochs (``--method-epochs`` gives
variants that make the task harder, such as modality dropout, the longer budget their validation
curves need to flatten); the seeds change the network's initialisation and the sampling. Model
selection is on the validation split only (the bundle keeps the best-on-validation checkpoint);
the test split is read once, by the final report.
Runs go to ``--out/runs/<variant>_seed<k>``; a run whose ``metrics.json`` exists is not run again,
so a stopped benchmark carries on where it stopped.

Results: ``docs/results/balance.json`` (``balance_<section>.json`` for another ``--section``):
per variant its seeds, each seed's figures, their mean and std, the paired differences to joint
of the same seed, minutes and epochs; ``scripts/render_results.py`` puts them in
``docs/results.md``. The full tables (with each seed's Dice, what the heads saw and when CGGM's B
acted) go to ``--out/report.md``; the plots (the validation curves of every run, to show that the
budget is enough for each; the Shapley values; CGGM's B during training) to ``docs/figures/``.

    python scripts/bench_balance.py                       # the default phantom benchmark
    python scripts/bench_balance.py --dataset_dir /data/BraTS2021 --cases 0 --spacing 0 --epochs 300
    python scripts/bench_balance.py --section heads --methods joint cggm cggm_level0 ogmge_every1 ogmge_level1
    python scripts/bench_balance.py --section ogmge_sublattice --methods joint ogmge_all_voxels ogmge
    python scripts/bench_balance.py --section robust --seeds 0 --methods joint moddrop two_view ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_results import balance_table, cell, shapley_table  # noqa: E402
from results import RESULTS, paired_stat, read_results, stat, write_results  # noqa: E402
from variants import ROBUST_VARIANTS, SEQUENCES, VARIANTS, bundle_arguments, default_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
REGIONS = ("tc", "wt", "et")

#: the variants of a default run; the others are opt-in (``--methods ... moddrop_p25``)
DEFAULT_METHODS = default_names(VARIANTS)
OPT_IN = tuple(name for name in VARIANTS if name not in DEFAULT_METHODS)
#: the default budgets of the variants whose validation curves need more than ``--epochs`` to flatten
DEFAULT_METHOD_EPOCHS = [
    ("moddrop", 150),
    ("moddrop_p25", 150),
    ("cggm_moddrop", 150),
    *((name, 150) for name in ROBUST_VARIANTS),
]
#: variants run with the first seed only by default (baselines that say what the data allow)
SINGLE_SEED = ("early_fusion", *(f"unimodal_{s}" for s in SEQUENCES))
#: what the data allow, not settings to choose among: no validation audit
BASELINES = (*SINGLE_SEED, *(name for name in VARIANTS if name.startswith("dedicated_")))


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def epochs_of(method: str, args: argparse.Namespace) -> int:
    """The method's budget: ``--method-epochs`` where it names the method, else ``--epochs``."""
    return dict(args.method_epochs).get(method, args.epochs)


def method_epochs(text: str) -> tuple[str, int]:
    """``METHOD=EPOCHS`` of ``--method-epochs``, checked."""
    method, sep, epochs = text.partition("=")
    if not sep or method not in VARIANTS or not epochs.isdigit() or int(epochs) < 1:
        raise argparse.ArgumentTypeError(
            f"expected METHOD=EPOCHS with METHOD one of {', '.join(VARIANTS)} and EPOCHS >= 1, got {text!r}"
        )
    return method, int(epochs)


def bundle_command(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    """``python -m monai.bundle run`` with the variant's config files and overrides, then the run's own."""
    command = [sys.executable, "-m", "monai.bundle", "run", *bundle_arguments(VARIANTS[method])]
    command += [
        "--run_name", run_name(method, seed),
        "--bundle_root", str(args.out),
        "--seed", str(seed),
        "--split_seed", str(args.split_seed),
        "--split_fractions", str(list(args.fractions)),
        "--epochs", str(epochs_of(method, args)),
        "--val_interval", str(args.val_interval),
        "--roi_size", str([args.roi] * 3),
        "--resume", "False",
    ]  # fmt: skip
    if args.dataset_dir:
        command += ["--dataset_dir", str(args.dataset_dir)]
    else:
        command += ["--phantom#cases", str(args.cases), "--phantom#spacing", str(args.spacing)]
    return command


def run_env(args: argparse.Namespace) -> dict[str, str]:
    """A bundle subprocess's environment: its threads, unbuffered output, the benchmark's cache."""
    return dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        PYTHONUNBUFFERED="1",
        CGGM_SEG_CACHE=str(args.out / "cache"),
    )


def validation_audit(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """The run's best-on-validation model audited on the validation split (``evaluate.json``:
    Dice and the 15 subsets), run once and kept in ``<run>/evaluation/metrics.json``: what a
    choice among settings reads, so that the test split is read by the final report only.
    ``None`` if the audit fails (its log is ``<run>/evaluation.log``)."""
    folder = args.out / "runs" / run_name(method, seed)
    result = folder / "evaluation" / "metrics.json"
    if not result.is_file():
        variant = VARIANTS[method]
        command = bundle_command(method, seed, args)
        files = [*variant.config_files, str(variant.bundle.parent / "evaluate.json")]
        command[command.index("--config_file") + 1] = str(files)
        command += ["--evaluate_split", "validation"]
        with open(folder / "evaluation.log", "w") as log:
            done = subprocess.run(command, cwd=ROOT, env=run_env(args), stdout=log, stderr=log)
        if done.returncode != 0:
            return None
    return json.loads(result.read_text())


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one method and seed (unless its metrics exist); returns its record."""
    folder = args.out / "runs" / run_name(method, seed)
    metrics = folder / "metrics.json"
    timing = folder / "bench_time.json"
    curve = read_curve(folder / "validation.csv")
    trained = curve[-1][0] if curve else None
    if metrics.is_file() and trained != epochs_of(method, args):  # another budget: train again
        print(f"{folder.name}: trained {trained} epochs, {epochs_of(method, args)} asked; running again")
        metrics.unlink()
    if not metrics.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evaluation" / "metrics.json").unlink(missing_ok=True)  # the old model's audit
        start = time.monotonic()
        with open(folder / "bench.log", "w") as log:
            done = subprocess.run(
                bundle_command(method, seed, args), cwd=ROOT, env=run_env(args), stdout=log, stderr=log
            )
        timing.write_text(json.dumps({"seconds": time.monotonic() - start, "exit": done.returncode}))
        if done.returncode != 0:  # reported as a failed run; the other runs go on
            return {
                "method": method,
                "seed": seed,
                "failed": f"exit {done.returncode}, see {folder / 'bench.log'}",
            }
    return {
        "method": method,
        "seed": seed,
        "metrics": json.loads(metrics.read_text()),
        "validation": None if method in BASELINES else validation_audit(method, seed, args),
        "seconds": json.loads(timing.read_text())["seconds"] if timing.is_file() else math.nan,
        "epochs": epochs_of(method, args),
        "curve": read_curve(folder / "validation.csv"),
        "folder": folder,
        "signal": signal(folder),
    }


def signal(folder: Path) -> dict[str, float] | None:
    """What a run's heads saw during training, from the balancing history in its last checkpoint:
    the mean B of each sequence over all iterations and the mean score eps over the last tenth of
    them; for OGM-GE its score s (as eps) and, as B, its coefficient k averaged over the iterations
    it modulated (some k < 1). For CGGM also when B acted (some B != 1): in how many iterations
    (``acting``), from which (``first_acting``, NaN if never) and each sequence's mean B then
    (``acting_<s>``). ``None`` for a run without a balancing handler."""
    import torch

    sys.path.insert(0, str(ROOT))
    from cggm_seg.handlers.checkpoint import latest_checkpoint

    newest = latest_checkpoint(folder / "models")
    if newest is None:
        return None
    state = torch.load(newest, map_location="cpu", weights_only=True).get("balancing")
    history = (state or {}).get("history") or []
    ogmge = bool(history) and f"s_{SEQUENCES[0]}" in history[0]
    if not history or not (ogmge or f"eps_{SEQUENCES[0]}" in history[0]):
        return None
    tail = history[-max(1, len(history) // 10) :]
    score, coefficient = ("s", "k") if ogmge else ("eps", "B")
    modulated = [h for h in history if any(h[f"k_{s}"] < 1 for s in SEQUENCES)] if ogmge else history
    out = {}
    for s in SEQUENCES:
        if f"{coefficient}_{s}" in history[0] and modulated:
            out[f"B_{s}"] = statistics.fmean(h[f"{coefficient}_{s}"] for h in modulated)
        out[f"eps_{s}"] = statistics.fmean(h[f"{score}_{s}"] for h in tail)
    if not ogmge and f"B_{SEQUENCES[0]}" in history[0]:
        acting = [h for h in history if any(h[f"B_{s}"] != 1 for s in SEQUENCES)]  # 1: neutral
        out["acting"] = float(len(acting))
        out["first_acting"] = float(acting[0]["iteration"]) if acting else math.nan
        for s in SEQUENCES:
            out[f"acting_{s}"] = statistics.fmean(h[f"B_{s}"] for h in acting) if acting else math.nan
    return out


def score_order(values: dict[str, float]) -> str:
    """The sequences from the highest value to the lowest, e.g. ``t1ce > flair > t2 > t1``."""
    return " > ".join(sorted(values, key=values.get, reverse=True))


def read_curve(csv_file: Path) -> list[tuple[int, float]]:
    """(epoch, val_mean_dice) of a run, the last row per epoch."""
    if not csv_file.is_file():
        return []
    lines = csv_file.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("val_mean_dice")
    points = {int(row.split(",")[0]): float(row.split(",")[column]) for row in lines[1:] if row}
    return sorted(points.items())


# -- summaries -----------------------------------------------------------------------------------


def measures(metrics: dict[str, Any]) -> dict[str, float]:
    """The benchmark's figures of one run: Dice per region (all sequences), the subset mean,
    Shapley values, the weakest sequence head's mean Dice."""
    summary = metrics["summary"]
    out = {f"dice_{r}": summary[f"dice_{r}"]["mean"] for r in (*REGIONS, "mean")}
    audit = metrics.get("missing_sequences")
    if audit:
        out["subset_mean"] = audit["subset_mean"]
        out.update({f"shapley_{s}": v for s, v in audit["shapley"].items()})
        for subset in audit["subsets"]:  # each sequence alone
            if len(subset["sequences"]) == 1:
                out[f"alone_{subset['sequences'][0]}"] = subset["dice_mean"]
    heads = [summary[f"head_dice_{s}_mean"]["mean"] for s in SEQUENCES if f"head_dice_{s}_mean" in summary]
    if heads:
        out["weakest_head"] = min(heads)
    return out


def summarize(records: list[dict], methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The results of ``records`` as data (``docs/results/balance.json``, see ``scripts/results.py``):
    per variant its seeds, epochs and minutes per run, each figure of :func:`measures` and the
    subset / all ratio over the seeds, the paired differences to joint of the mean and 15-subset
    Dice, and the least-used sequence's Shapley value (joint's lowest) against joint's."""
    for r in records:
        r["m"] = measures(r["metrics"])
        if "subset_mean" in r["m"]:
            r["m"]["subset_ratio"] = r["m"]["subset_mean"] / r["m"]["dice_mean"]
        if r.get("validation"):  # the validation split's audit: what a choice reads
            validation = measures(r["validation"])
            r["m"].update(
                {f"val_{k}": validation[k] for k in ("dice_mean", "subset_mean") if k in validation}
            )
    by_method = {
        m: sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"]) for m in methods
    }
    joint = {r["seed"]: r["m"] for r in by_method.get("joint", [])}
    joint_shapley = (
        {s: statistics.fmean(m[f"shapley_{s}"] for m in joint.values()) for s in SEQUENCES} if joint else {}
    )
    least = min(joint_shapley, key=joint_shapley.get) if joint_shapley else None
    variants = {}
    for method, rs in by_method.items():
        if not rs:
            continue
        seeds = [r["seed"] for r in rs]
        keys = dict.fromkeys(k for r in rs for k in r["m"])
        seconds = [r["seconds"] for r in rs if not math.isnan(r["seconds"])]
        variant: dict[str, Any] = {
            "description": VARIANTS[method].description,
            "seeds": seeds,
            "epochs": rs[0]["epochs"],
            "minutes_per_run": statistics.fmean(seconds) / 60 if seconds else None,
            "metrics": {k: stat([r["m"].get(k, math.nan) for r in rs]) for k in keys},
        }
        if method != "joint":
            variant["vs_joint"] = {
                k: paired_stat(
                    {r["seed"]: r["m"].get(k, math.nan) for r in rs},
                    {s: m.get(k, math.nan) for s, m in joint.items()},
                    seeds,
                )
                for k in ("dice_mean", "subset_mean")
            }
        if (
            least
            and all(f"shapley_{s}" in r["m"] for r in rs for s in SEQUENCES)
            and joint_shapley[least] > 0
        ):
            variant["least_used_vs_joint"] = (
                statistics.fmean(r["m"][f"shapley_{least}"] for r in rs) / joint_shapley[least]
            )
        variants[method] = variant
    ceiling = ceiling_subset_mean(variants)
    if ceiling is not None:
        for variant in variants.values():
            if "subset_mean" in variant["metrics"]:
                variant["ceiling_fraction"] = variant["metrics"]["subset_mean"]["mean"] / ceiling
    alone_own = {
        s: variants[f"unimodal_{s}"]["metrics"]["dice_mean"]["mean"]
        for s in SEQUENCES
        if f"unimodal_{s}" in variants
    }
    return {
        "benchmark": "bench_balance",
        "ceiling_subset_mean": ceiling,
        "unimodal_dice": alone_own or None,
        "source": f"scripts/bench_balance.py, runs read on {time.strftime('%Y-%m-%d')}",
        "settings": {
            "data": f"--dataset_dir {args.dataset_dir}"
            if args.dataset_dir
            else f"the phantom, {args.cases} cases at {args.spacing:g} mm",
            "split_seed": args.split_seed,
            "fractions": list(args.fractions),
            "roi": args.roi,
            "val_interval": args.val_interval,
            "seeds": args.seeds,
            "reproduce": reproduce_command(),
        },
        "sequences": list(SEQUENCES),
        "least_used": least,
        "best_member_subset_mean": best_member_subset_mean(variants),
        "variants": variants,
    }


def dedicated_name(subset: tuple[str, ...]) -> str:
    """The variant of the model dedicated to ``subset``: ``unimodal_<s>`` for one sequence,
    ``dedicated_<s1>_<s2>...`` otherwise."""
    return f"unimodal_{subset[0]}" if len(subset) == 1 else "dedicated_" + "_".join(subset)


def ceiling_subset_mean(variants: dict[str, dict]) -> float | None:
    """The phantom's ceiling: the mean over the 15 subsets of each subset's dedicated model's
    all-sequence Dice (one model per case of missing data); ``None`` unless every one ran."""
    from itertools import combinations

    subsets = [c for size in range(1, len(SEQUENCES) + 1) for c in combinations(SEQUENCES, size)]
    names = [dedicated_name(c) for c in subsets]
    if not all(n in variants for n in names):
        return None
    return statistics.fmean(variants[n]["metrics"]["dice_mean"]["mean"] for n in names)


def best_member_subset_mean(variants: dict[str, dict]) -> float | None:
    """The mean over the 15 subsets of the sequences when each subset is scored by its best member
    alone (the unimodal variants' mean Dice); ``None`` without every unimodal variant."""
    alone = {
        s: variants[f"unimodal_{s}"]["metrics"]["dice_mean"]["mean"]
        for s in SEQUENCES
        if f"unimodal_{s}" in variants
    }
    if len(alone) != len(SEQUENCES):
        return None
    from cggm_seg.evaluation.audit import sequence_subsets

    return statistics.fmean(max(alone[s] for s in subset) for subset in sequence_subsets(SEQUENCES))


def tables(summary: dict[str, Any], records: list[dict], methods: list[str]) -> list[str]:
    """The main and Shapley tables of ``summary`` (as ``docs/results.md`` shows them), each seed's
    Dice, what the heads saw, when CGGM's B acted, and the best-member reference."""
    by_method = {
        m: sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"]) for m in methods
    }
    lines = [
        *balance_table(summary),
        "",
        "Shapley value of each sequence for the mean Dice (exact, over the 16 coalitions; they sum to the "
        "all-sequence mean Dice):",
        "",
        *shapley_table(summary),
    ]
    lines += seed_table(by_method)
    lines += signal_table(by_method)
    lines += acting_table(by_method)
    if summary["best_member_subset_mean"] is not None:
        lines += [
            "",
            "Reference: each subset scored by its best member alone (the unimodal rows): mean over the "
            f"15 subsets {summary['best_member_subset_mean']:.3f}.",
        ]
    return lines


def seed_table(by_method: dict[str, list[dict]]) -> list[str]:
    """Each seed's all-sequence and 15-subset mean Dice, to four decimals, for the methods run on
    more than one seed: what paired comparisons between two methods of a section read."""
    rows = []
    for method, rs in by_method.items():
        rs = sorted((r for r in rs if "subset_mean" in r["m"]), key=lambda r: r["seed"])
        if len(rs) < 2:
            continue
        seeds = ", ".join(str(r["seed"]) for r in rs)
        means = "; ".join(f"{r['m']['dice_mean']:.4f}" for r in rs)
        subsets = "; ".join(f"{r['m']['subset_mean']:.4f}" for r in rs)
        rows.append(f"| {method} | {seeds} | {means} | {subsets} |")
    if not rows:
        return []
    return [
        "",
        "Each seed's mean Dice, all sequences and over the 15 subsets (in seed order):",
        "",
        "| method | seeds | mean Dice (each seed) | 15-subset mean (each seed) |",
        "|---|---|---|---|",
        *rows,
    ]


def acting_table(by_method: dict[str, list[dict]]) -> list[str]:
    """When each CGGM variant's B departed from neutral, per seed, and its mean value then (from the
    same checkpoint histories as :func:`signal_table`; OGM-GE's k while it modulates is there)."""
    rows = []
    for method, rs in by_method.items():
        rs = [r for r in rs if r.get("signal") and "acting" in r["signal"]]
        if not rs:
            continue
        iterations = "; ".join(f"{r['signal']['acting']:.0f}" for r in rs)
        first = "; ".join(
            "-" if math.isnan(r["signal"]["first_acting"]) else f"{r['signal']['first_acting']:.0f}"
            for r in rs
        )
        means = [cell(stat([r["signal"][f"acting_{s}"] for r in rs])) for s in SEQUENCES]
        rows.append(f"| {method} | {iterations} | {first} | " + " | ".join(means) + " |")
    if not rows:
        return []
    return [
        "",
        "When CGGM's B acted (some B different from 1), from the same histories: the iterations in "
        "which it did and the first of them (each seed, in seed order; out of all the run's "
        "iterations), and each sequence's mean B in those iterations (mean over seeds):",
        "",
        "| method | iterations acting (each seed) | first (each seed) | "
        + " | ".join(f"B {s} while acting" for s in SEQUENCES)
        + " |",
        "|---|---|---|" + "---|" * len(SEQUENCES),
        *rows,
    ]


def signal_table(by_method: dict[str, list[dict]]) -> list[str]:
    """The heads' signal of every method with heads: the order of their training scores, those
    scores, the mean B (the balancing methods), and each head's own test Dice."""
    rows = []
    for method, rs in by_method.items():
        rs = [r for r in rs if r.get("signal")]
        if not rs:
            continue
        eps = {s: statistics.fmean(r["signal"][f"eps_{s}"] for r in rs) for s in SEQUENCES}
        orders = sorted({score_order({s: r["signal"][f"eps_{s}"] for s in SEQUENCES}) for r in rs})
        b = [cell(stat([r["signal"].get(f"B_{s}", math.nan) for r in rs])) for s in SEQUENCES]
        summaries = [r["metrics"]["summary"] for r in rs]
        heads = [cell(stat([m[f"head_dice_{s}_mean"]["mean"] for m in summaries])) for s in SEQUENCES]
        rows.append(
            f"| {method} | {score_order(eps)} | {'; '.join(orders)} | "
            + " | ".join(f"{eps[s]:.3f}" for s in SEQUENCES)
            + " | "
            + " | ".join(b)
            + " | "
            + " | ".join(heads)
            + " |"
        )
    if not rows:
        return []
    return [
        "",
        "What the heads saw: their training scores eps over the last tenth of the iterations (mean over "
        "seeds, and the order of each seed), the mean B over all iterations (balancing methods only; the "
        "joint run's heads only observe; for OGM-GE its true-class probability s and its coefficient k, "
        "averaged over the iterations it modulated), and each head's own Dice on the test split (full "
        "volumes, the head's logits upsampled to them):",
        "",
        "| method | eps order (mean) | eps order (each seed) | "
        + " | ".join(f"eps {s}" for s in SEQUENCES)
        + " | "
        + " | ".join(f"B {s}" for s in SEQUENCES)
        + " | "
        + " | ".join(f"head Dice {s}" for s in SEQUENCES)
        + " |",
        "|---|---|---|" + "---|" * (3 * len(SEQUENCES)),
        *rows,
    ]


def plot_curves(records: list[dict], methods: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    for i, method in enumerate(methods):
        for j, r in enumerate(rs := [r for r in records if r["method"] == method]):
            if r["curve"]:
                x, y = zip(*r["curve"])
                ax.plot(x, y, color=f"C{i % 10}", linestyle="-" if i < 10 else "--", alpha=0.8,
                        label=method if j == 0 else None, linewidth=1.1)  # fmt: skip
        del rs
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mean Dice (TC, WT, ET; all sequences)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=3, loc="lower right")
    ax.set_title("Validation curves of every run (one line per seed)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_shapley_groups(records: list[dict], methods: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [
        m
        for m in methods
        if any(r["method"] == m for r in records)
        and all(f"shapley_{s}" in r["m"] for r in records if r["method"] == m for s in SEQUENCES)
    ]
    shown = [m for m in shown if not m.startswith("unimodal_")]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(SEQUENCES)
    for k, s in enumerate(SEQUENCES):
        values = [
            statistics.fmean(r["m"][f"shapley_{s}"] for r in records if r["method"] == m) for m in shown
        ]
        ax.bar([i + (k - 1.5) * width for i in range(len(shown))], values, width, label=s)
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right")
    ax.set_ylabel("Shapley value (mean Dice)")
    ax.set_title("How much each method's model uses each sequence (mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=4, fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_subsets(records: list[dict], methods: list[str], png: Path, summary: dict[str, Any]) -> bool:
    """Test Dice of each of the 15 subsets (mean over seeds) per setting, with each subset's own
    model (the ceiling) as a black tick where it ran; ``False`` (nothing drawn) without subsets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if not m.startswith(("unimodal_", "dedicated_", "early_fusion"))]
    shown = [
        m for m in shown if all(r["metrics"].get("missing_sequences") for r in records if r["method"] == m)
    ]
    if not shown:
        return False
    first = next(r for r in records if r["method"] == shown[0])
    names = [s["name"] for s in first["metrics"]["missing_sequences"]["subsets"]]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shown)
    for k, method in enumerate(shown):
        runs = [r for r in records if r["method"] == method]
        values = [
            statistics.fmean(
                next(s["dice_mean"] for s in r["metrics"]["missing_sequences"]["subsets"] if s["name"] == n)
                for r in runs
            )
            for n in names
        ]
        ax.bar(
            [i + (k - (len(shown) - 1) / 2) * width for i in range(len(names))], values, width, label=method
        )
    variants = summary["variants"]
    for i, name in enumerate(names):
        own = dedicated_name(tuple(name.split("+")))
        if own in variants:
            level = variants[own]["metrics"]["dice_mean"]["mean"]
            label = "its own model (ceiling)" if i == 0 else None
            ax.plot([i - 0.42, i + 0.42], [level, level], color="black", lw=1.5, label=label)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize="small")
    ax.set_ylabel("test mean Dice (TC, WT, ET)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=3, loc="upper left")
    ax.set_title("Dice with each subset of the sequences (the others missing), mean over seeds")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


# -- main ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(
        f"  {name}{'' if v.default else ' (opt-in)'}: {v.description}" for name, v in VARIANTS.items()
    )
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="variants (scripts/variants.py):\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset_dir", type=Path, help="a BraTS folder (any layout the toolkit reads); default: phantom"
    )
    p.add_argument("--cases", type=int, default=40, help="phantom cases (default 40)")
    p.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm (default 4)")
    p.add_argument(
        "--roi", type=int, default=32, help="cubic training crop and inference window (default 32)"
    )
    p.add_argument("--epochs", type=int, default=100, help="epochs of every run (default 100)")
    p.add_argument(
        "--method-epochs", type=method_epochs, nargs="+", default=DEFAULT_METHOD_EPOCHS,
        metavar="METHOD=EPOCHS",
        help="a longer (or shorter) budget for some variants, e.g. moddrop=150 for variants that make "
        "the task harder and need more epochs to flatten (the curves plot shows whether they did); "
        "default: moddrop, moddrop_p25 and cggm_moddrop 150 (a list given here replaces the default)",
    )  # fmt: skip
    p.add_argument("--val-interval", type=int, default=10, help="epochs between validations (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument(
        "--split-seed", type=int, default=0, help="seed of the one train/val/test split (default 0)"
    )
    p.add_argument(
        "--fractions", type=float, nargs=3, default=[0.55, 0.15, 0.3], metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions (default 0.55 0.15 0.3: 20 / 7 / 13 of 40 phantom cases)",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="+", default=DEFAULT_METHODS, choices=list(VARIANTS), metavar="VARIANT",
        help="variants to run (default: all but " + ", ".join(OPT_IN) + ")",
    )  # fmt: skip
    p.add_argument(
        "--all-seeds", action="store_true", help="run the unimodal and early-fusion baselines on every seed"
    )
    p.add_argument(
        "--single-seed", nargs="*", default=[], choices=list(VARIANTS), metavar="VARIANT",
        help="variants run with the first seed only (pilots), besides the baselines that always are",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_balance", help="benchmark folder")
    p.add_argument(
        "--results", type=Path, default=None,
        help="the results file (default docs/results/balance.json; for another section "
        "balance_<section>.json)",
    )  # fmt: skip
    p.add_argument("--doc", type=Path, default=None, help="the full tables' page (default --out/report.md)")
    p.add_argument("--no-doc", action="store_true", help="print the tables only: write no file, no plot")
    p.add_argument(
        "--keep-retired", action="store_true",
        help="keep the rows of the results file's variants that scripts/variants.py no longer defines "
        "(retired options), each marked with where it came from",
    )  # fmt: skip
    p.add_argument(
        "--section",
        default="main",
        help="the section to write (default: main); another name writes its own results file, section "
        "and plots",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out.resolve()
    section = "" if args.section == "main" else f"_{args.section}"
    args.results = args.results or RESULTS / f"balance{section}.json"
    args.doc = args.doc or args.out / "report.md"
    jobs = [
        (method, seed)
        for seed in args.seeds
        for method in args.methods
        if seed == args.seeds[0] or (args.all_seeds or method not in (*SINGLE_SEED, *args.single_seed))
    ]
    # The phantom is generated once, before the parallel runs (each would otherwise wait on it).
    if not args.dataset_dir:
        sys.path.insert(0, str(ROOT))
        from cggm_seg.apps.brats.prepare import default_phantom_dir, prepare_dataset

        os.environ["CGGM_SEG_CACHE"] = str(args.out / "cache")
        phantom = default_phantom_dir(args.cases, 0, "brats2021", args.spacing)
        prepare_dataset(phantom, args.out / "prepare", phantom_cases=args.cases, phantom_spacing=args.spacing)
    started = time.monotonic()
    records: list[dict] = []
    failed: list[dict] = []
    print(f"{len(jobs)} runs, {args.jobs} at a time, {args.threads} thread(s) each -> {args.out}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, m, s, args): (m, s) for m, s in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            method, seed = futures[future]
            record = future.result()
            if "failed" in record:
                failed.append(record)
                print(f"[{done}/{len(jobs)}] {run_name(method, seed)} FAILED: {record['failed']}", flush=True)
                continue
            records.append(record)
            m = measures(record["metrics"])
            print(
                f"[{done}/{len(jobs)}] {run_name(method, seed)}: mean Dice {m['dice_mean']:.3f}, "
                f"subset mean {m.get('subset_mean', math.nan):.3f} ({record['seconds'] / 60:.1f} min; "
                f"{(time.monotonic() - started) / 60:.1f} min so far)",
                flush=True,
            )
    wall = time.monotonic() - started
    methods = [m for m in args.methods if any(r["method"] == m for r in records)]
    summary = summarize(records, methods, args)
    body = tables(summary, records, methods)
    if failed:
        body += [
            "",
            "Failed runs: "
            + "; ".join(f"{run_name(r['method'], r['seed'])} ({r['failed']})" for r in failed),
        ]
    print("\n".join(body))
    if args.no_doc:
        return 0
    if args.keep_retired:
        summary["variants"].update(retired_rows(args.results))
    write_results(args.results, summary)
    print(f"wrote {args.results}")
    plot_curves(records, methods, FIGURES / png_name(args, "curves"))
    plot_shapley_groups(records, methods, FIGURES / png_name(args, "shapley"))
    plots = ["curves", "shapley"]
    if plot_subsets(records, methods, FIGURES / png_name(args, "subsets"), summary):
        plots.append("subsets")
    for method in (m for m in methods if m.startswith("cggm")):  # every CGGM variant's B, seed 0
        balance_png = args.out / "runs" / run_name(method, args.seeds[0]) / "balance.png"
        if balance_png.is_file() and (method == "cggm" or args.section != "main"):
            shutil.copy(balance_png, FIGURES / png_name(args, f"{method}_B"))
            plots.append(f"{method}_B")
    run_minutes = sum(r["seconds"] for r in records if not math.isnan(r["seconds"])) / 60
    default = sum(
        r["seconds"] for r in records if r["method"] in DEFAULT_METHODS and not math.isnan(r["seconds"])
    )
    body += [
        "",
        f"A default run (every variant but {', '.join(OPT_IN)}): {default / 60:.0f} run-minutes by these "
        "runs' times.",
    ]
    text = render(args, body, wall, len(jobs), run_minutes, plots)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_overhead import update_doc

    update_doc(args.doc, text, *markers(args.section))
    print(f"wrote {args.doc}")
    return 0


def retired_rows(results: Path) -> dict[str, Any]:
    """The rows of ``results`` (an earlier results file) whose variants are no longer defined, each
    with ``retired`` saying where it came from; ``{}`` without the file."""
    if not results.is_file():
        return {}
    earlier = read_results(results)
    source = earlier.get("source", str(results))
    return {
        name: {**row, "retired": row.get("retired", f"variant retired; row kept from: {source}")}
        for name, row in earlier.get("variants", {}).items()
        if name not in VARIANTS
    }


def reproduce_command() -> str:
    return "python scripts/bench_balance.py " + (" ".join(sys.argv[1:]) or "(defaults)")


def markers(section: str = "main") -> tuple[str, str]:
    """The doc markers of ``--section`` (the default section keeps its historical markers)."""
    key = "" if section == "main" else f" {section}"
    return (
        f"<!-- bench_balance:begin{key} (written by scripts/bench_balance.py) -->",
        f"<!-- bench_balance:end{key} -->",
    )


def png_name(args: argparse.Namespace, what: str) -> str:
    """The file name of one of the section's plots (``bench_balance_<what>.png`` for the default)."""
    section = "" if args.section == "main" else f"{args.section}_"
    return f"bench_balance_{section}{what}.png"


#: the headings of the sections other than the main one (others: "bench_balance, section `name`")
SECTION_TITLES = {
    "heads": "Half- against full-resolution heads",
    "ogmge_every4": "OGM-GE's full-resolution heads trained every 4th iteration",
    "ogmge_every8": "OGM-GE's full-resolution heads trained every 8th iteration",
    "ogmge_sublattice": (
        "OGM-GE's full-resolution heads trained and scored on one voxel in 8 (the bundle's OGM-GE)"
    ),
    "robust": "Robust training: any sequence may be missing",
    "ceiling": "The phantom's ceiling: a model of its own for each subset of the sequences",
}
PLOT_TITLES = {
    "curves": "validation curves",
    "shapley": "Shapley values",
    "cggm_B": "CGGM's scores and B during training, seed 0",
    "subsets": "Dice with each subset of the sequences, against each subset's own model",
}


def plot_title(plot: str) -> str:
    """The caption of one of the section's plots (``<method>_B``: that CGGM variant's B)."""
    if plot in PLOT_TITLES:
        return PLOT_TITLES[plot]
    return f"{plot.removesuffix('_B')}: the heads' scores and B during training, seed 0"


def render(
    args: argparse.Namespace, body: list[str], wall: float, runs: int, run_minutes: float, plots: list[str]
) -> str:
    """The section: settings, ``body`` (the tables), the ``plots`` written (keys of :data:`PLOT_TITLES`)."""
    data = (
        f"`--dataset_dir {args.dataset_dir}`"
        if args.dataset_dir
        else f"the phantom, {args.cases} cases at {args.spacing:g} mm"
    )
    figures = Path(os.path.relpath(FIGURES, args.doc.resolve().parent))
    return "\n".join(
        [
            markers(args.section)[0],
            "## Does balancing balance? (`scripts/bench_balance.py`)"
            if args.section == "main"
            else f"## {SECTION_TITLES.get(args.section, f'bench_balance, section `{args.section}`')} "
            f"(`scripts/bench_balance.py --section {args.section}`)",
            "",
            f"Data: {data}, one split (seed {args.split_seed}, fractions {list(args.fractions)}); every run "
            f"{args.epochs} epochs unless the table says otherwise, crop {args.roi}^3, validation every "
            f"{args.val_interval} epochs, best-on-"
            f"validation checkpoint evaluated once on the test split; seeds {args.seeds} (unimodal and early "
            f"fusion: seed {args.seeds[0]} only{' unless --all-seeds' if not args.all_seeds else ''}). "
            f"{runs} runs, {args.jobs} in parallel with {args.threads} torch thread(s) each, on a "
            f"{os.cpu_count()}-core machine: {run_minutes:.0f} run-minutes in all, about "
            f"{run_minutes / args.jobs:.0f} min wall at {args.jobs} at a time (this invocation: "
            f"{wall / 60:.0f} min; runs already done are read, not repeated; minutes per run below "
            "include data loading, validation and the 16-pass test audit). Dice is case-level 3D Dice on "
            "full volumes (sliding window); the subset mean is over the 15 non-empty subsets of the "
            "sequences, missing ones zero-filled after intensity normalisation. Mean ± std over seeds; "
            "Δ = paired difference to joint training of the same seed. Variants: `scripts/variants.py`.",
            "",
            *body,
            "",
            *[line for p in plots for line in (f"![{plot_title(p)}]({figures / png_name(args, p)})", "")],
            f"Reproduce: `{reproduce_command()}`",
            markers(args.section)[1],
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
