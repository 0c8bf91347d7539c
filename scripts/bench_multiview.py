"""Does balancing help on classification and regression? joint vs OGM-GE vs CGGM on the shipped datasets.

Every run is the multi-view bundle itself (``bundles/multiview_cggm.json``), run in-process through
``monai.bundle.ConfigWorkflow``: trained with the best-on-validation checkpoint kept, then
evaluated once on the test split with the missing-view audit. Methods:

- ``joint``: the multi-encoder network, plain loss (the light heads only observe);
- ``ogmge``: OGM-GE (alpha 0.8, GE noise, first half of the epochs);
- ``cggm``: CGGM with the toolkit's default (trend) signal, magnitude ``grad`` + direction ``gradient``
  (rho 1.3, lambda 0.2, the paper's CMU-MOSI / IEMOCAP values);
- ``cggm_magnitude`` / ``cggm_direction``: CGGM with only one of its two parts;
- ``cggm_paper``: CGGM with the paper's bare per-iteration formula (``preset="paper"``).

Each seed k draws its own stratified split (``split_seed = k``) and initialisation; every method
sees the same split and initial weights for a seed, so the differences to joint are paired.
Results (mean +- std over seeds, paired differences to joint) go to ``docs/benchmarks.md``
between markers, with the validation curves of every run.

    python scripts/bench_multiview.py                      # 3 datasets x 6 methods x 5 seeds
    python scripts/bench_multiview.py --datasets digits --seeds 0 1 --epochs 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cggm_seg, even where another one is installed
sys.path.insert(0, str(ROOT / "scripts"))
from bench_balance import mean_std, paired  # noqa: E402  (the same summaries as the BraTS benchmark)

BUNDLE = ROOT / "bundles" / "multiview_cggm.json"
DATASETS = ("digits", "breast_cancer", "diabetes")

#: method -> bundle overrides
METHODS: dict[str, dict[str, Any]] = {
    "joint": {"method": "joint"},
    "ogmge": {"method": "ogmge"},
    "cggm": {"method": "cggm"},
    "cggm_magnitude": {"method": "cggm", "methods#cggm#direction": "off"},
    "cggm_direction": {"method": "cggm", "methods#cggm#magnitude": "off"},
    "cggm_paper": {"method": "cggm", "methods#cggm#preset": "paper"},
}
#: the headline metric of each dataset's table, and a second one
SECOND = {"accuracy": "f1_macro", "r2": "mae"}


def run_name(dataset: str, method: str, seed: int) -> str:
    return f"{dataset}_{method}_seed{seed}"


def run_one(dataset: str, method: str, seed: int, out: str, epochs: int) -> dict[str, Any]:
    """Train and evaluate one run in this process (unless its metrics exist); returns its record."""
    folder = Path(out) / "runs" / run_name(dataset, method, seed)
    metrics_file = folder / "metrics.json"
    seconds = math.nan
    if not metrics_file.is_file():
        import torch
        from monai.bundle import ConfigWorkflow

        torch.set_num_threads(1)
        folder.mkdir(parents=True, exist_ok=True)
        overrides = {
            **METHODS[method],
            "dataset": dataset,
            "seed": seed,
            "epochs": epochs,
            "resume": False,
            "bundle_root": str(Path(out)),
            "run_name": run_name(dataset, method, seed),
            "output_dir": str(folder),
        }
        start = time.monotonic()
        with (
            open(folder / "bench.log", "w") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            workflow = ConfigWorkflow(
                config_file=str(BUNDLE), workflow_type="train", logging_file=False, **overrides
            )
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        seconds = time.monotonic() - start
        (folder / "bench_time.json").write_text(json.dumps({"seconds": seconds}))
    elif (folder / "bench_time.json").is_file():
        seconds = json.loads((folder / "bench_time.json").read_text())["seconds"]
    return {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "metrics": json.loads(metrics_file.read_text()),
        "seconds": seconds,
        "curve": read_curve(folder / "validation.csv"),
    }


def read_curve(csv_file: Path) -> list[tuple[int, float]]:
    """(epoch, validation key metric) of a run, the last row per epoch."""
    if not csv_file.is_file():
        return []
    lines = csv_file.read_text().splitlines()
    points = {int(r.split(",")[0]): float(r.split(",")[1]) for r in lines[1:] if r}
    return sorted(points.items())


# -- summaries -----------------------------------------------------------------------------------


def measures(metrics: dict[str, Any]) -> dict[str, float]:
    audit = metrics["missing_views"]
    main = audit["main_metric"]
    out = {main: metrics["metrics"][main], SECOND[main]: metrics["metrics"][SECOND[main]]}
    out["subset_mean"] = audit["subset_mean"]
    out["weakest_head"] = min(m[main] for m in metrics["heads"].values())
    out.update({f"shapley_{v}": phi for v, phi in audit["shapley"].items()})
    return out


def dataset_table(dataset: str, records: list[dict], methods: list[str]) -> list[str]:
    rs_all = [r for r in records if r["dataset"] == dataset]
    if not rs_all:
        return []
    for r in rs_all:
        r["m"] = measures(r["metrics"])
    first = rs_all[0]["metrics"]
    main = first["missing_views"]["main_metric"]
    second = SECOND[main]
    views = list(first["views"])
    by_method = {m: [r for r in rs_all if r["method"] == m] for m in methods}
    joint = {r["seed"]: r for r in by_method.get("joint", [])}
    lines = [
        f"### {dataset} ({first['task']}; views {', '.join(views)}; "
        f"{first['num_samples']} test samples per seed)",
        "",
        f"| method | seeds | {main} | Δ {main} vs joint | {second} | Δ {second} | subset mean ({main}) "
        f"| Δ subset | weakest head ({main}) | Δ weakest head | "
        + " | ".join(f"Shapley {v}" for v in views)
        + " | seconds per run |",
        "|---|" + "---|" * (10 + len(views)),
    ]
    for method, rs in by_method.items():
        if not rs:
            continue
        cell = {k: mean_std([r["m"][k] for r in rs]) for k in rs[0]["m"]}
        d = {
            k: paired(rs, joint, k) if method != "joint" else ""
            for k in (main, second, "subset_mean", "weakest_head")
        }
        seconds = [r["seconds"] for r in rs if not math.isnan(r["seconds"])]
        timing = f"{statistics.fmean(seconds):.0f}" if seconds else "-"
        lines.append(
            f"| {method} | {len(rs)} | {cell[main]} | {d[main]} | {cell[second]} | {d[second]} "
            f"| {cell['subset_mean']} | {d['subset_mean']} | {cell['weakest_head']} | {d['weakest_head']} | "
            + " | ".join(cell[f"shapley_{v}"] for v in views)
            + f" | {timing} |"
        )
    return lines + [""]


def plot_curves(records: list[dict], datasets: list[str], methods: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for i, method in enumerate(methods):
            rs = [r for r in records if r["dataset"] == dataset and r["method"] == method and r["curve"]]
            for j, r in enumerate(rs):
                x, y = zip(*r["curve"])
                ax.plot(x, y, color=f"C{i}", alpha=0.6, linewidth=1, label=method if j == 0 else None)
        rs = [r for r in records if r["dataset"] == dataset]
        main = rs[0]["metrics"]["missing_views"]["main_metric"] if rs else ""
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {main}")
        # a diverging run (the paper preset) would squash the others: clip, and say so
        ax.set_ylim(0.0 if main == "accuracy" else -0.5, 1.0)
        ax.text(0.99, 0.01, "(clipped)", transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Validation curves of every run (one line per seed)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def markers() -> tuple[str, str]:
    return (
        "<!-- bench_multiview:begin (written by scripts/bench_multiview.py) -->",
        "<!-- bench_multiview:end -->",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every run (default 40)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_multiview", help="benchmark folder")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true", help="print the tables only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out.resolve()
    jobs = [(d, m, s) for s in args.seeds for d in args.datasets for m in args.methods]
    started = time.monotonic()
    records: list[dict] = []
    failed: list[str] = []
    print(f"{len(jobs)} runs, {args.jobs} at a time -> {args.out}", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, d, m, s, str(args.out), args.epochs): (d, m, s) for d, m, s in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            name = run_name(*futures[future])
            try:
                record = future.result()
            except Exception as err:  # reported; the other runs go on
                failed.append(f"{name} ({type(err).__name__}: {err})")
                print(f"[{done}/{len(jobs)}] {name} FAILED: {err}", flush=True)
                continue
            records.append(record)
            m = measures(record["metrics"])
            main = record["metrics"]["missing_views"]["main_metric"]
            print(
                f"[{done}/{len(jobs)}] {name}: {main} {m[main]:.3f}, subset mean {m['subset_mean']:.3f} "
                f"({record['seconds']:.0f} s; {(time.monotonic() - started) / 60:.1f} min so far)",
                flush=True,
            )
    wall = time.monotonic() - started
    trained = sum(r["seconds"] for r in records if not math.isnan(r["seconds"]))
    methods = [m for m in args.methods if any(r["method"] == m for r in records)]
    body: list[str] = []
    for dataset in args.datasets:
        body += dataset_table(dataset, records, methods)
    if failed:
        body += ["Failed runs: " + "; ".join(failed), ""]
    print("\n".join(body))
    if args.no_doc:
        return 0
    plot_curves(records, args.datasets, methods, args.doc.parent / "bench_multiview_curves.png")
    shown, skip = [], False
    for a in sys.argv[1:]:  # the flags that change results, not where they are written
        if skip:
            skip = False
        elif a in ("--out", "--doc", "--jobs"):
            skip = True
        else:
            shown.append(a)
    flags = " ".join(shown) or "(defaults)"
    section = "\n".join(
        [
            markers()[0],
            "## Classification and regression (`scripts/bench_multiview.py`)",
            "",
            f"The multi-view bundle on the datasets that ship with scikit-learn; every run "
            f"{args.epochs} epochs (batch 32, SGD), best-on-validation checkpoint evaluated once on the "
            f"test split; seeds {args.seeds}, each with its own stratified 60 / 20 / 20 split, shared by "
            "every method (Δ = paired difference to joint training of the same seed). Subset mean: the "
            "main metric averaged over every non-empty subset of the views, absent views zero-filled (the "
            "training mean). Shapley values share out the main metric between the views (they sum to its "
            f"value with every view minus its value with none). {len(jobs)} runs, one torch thread each, on "
            f"a {os.cpu_count()}-core machine: {trained / 60:.0f} min of run time in all (the last "
            f"invocation: {wall / 60:.0f} min wall, {args.jobs} at a time; runs already done are read, not "
            "repeated).",
            "",
            *body,
            "![validation curves](bench_multiview_curves.png)",
            "",
            f"Reproduce: `python scripts/bench_multiview.py {flags}`",
            markers()[1],
        ]
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_overhead import update_doc

    update_doc(args.doc, section, *markers())
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
