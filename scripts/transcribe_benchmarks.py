"""Transcribe the tables of the old results page into ``docs/results/*.json`` (run once).

The runs behind the tables of ``docs/benchmarks.md`` (kept as ``docs/archive.md``) are not on
this machine; this reads the numbers back from the page, so that ``render_results.py`` has data
until the benchmarks are run again (each benchmark script then writes its own file). It reads the
sections between the scripts' markers:

- ``bench_balance`` -> ``balance.json``: the main section (joint, cggm, ..., unimodal_flair), with
  its rows under today's variant names, and the rows of today's ``joint``, ``cggm`` and ``ogmge``
  from the sections that ran them (``BALANCE_ROWS``);
- ``bench_multiview`` -> ``multiview.json``;
- the three ``bench_overhead`` sections of the ``--suite`` -> ``overhead.json``, the rows that are
  variants of ``scripts/variants.py`` today under their variant names (``plain``: the old
  ``joint``, plain loss and no heads), and the worst peak-memory row of all the section's rows.

Values are kept as the page prints them (three decimals); a multi-seed cell gives a mean and a
std but no per-seed values, which the page does not have; a single-seed cell is its seed's value.

    python scripts/transcribe_benchmarks.py
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "docs/archive.md"
#: when the runs behind each section ran (the page's prose and the commits that wrote the sections)
DATES = {
    "balance": "2026-12-01 to 2026-12-06: joint and cggm from section cggm_sublattice, ogmge from "
    "section ogmge_sublattice, the rest from the main section",
    "multiview": "2026-12-02",
    "overhead": "2026-12-06 (`python scripts/bench_overhead.py --suite`, 03:54-05:11)",
}
#: the ``bench_balance`` sections read, and their runs
SECTIONS = {
    "main": (
        "main section, runs of 2026-12-01 and 2026-12-02 (the heads at full resolution, the default then)"
    ),
    "ogmge_sublattice": "section ogmge_sublattice, runs of 2026-12-04",
    "cggm_sublattice": "section cggm_sublattice, runs of 2026-12-06",
}
#: the BraTS variants of today and where their numbers are: (variant, section, the section's row).
#: The main section ran CGGM with full-resolution heads (today's ``cggm_level0``) and OGM-GE with
#: its heads every iteration on every voxel (today's ``ogmge_every1``); today's ``cggm`` and
#: ``ogmge``, and joint with the heads it has today, come from the later sections.
BALANCE_ROWS: list[tuple[str, str, str]] = [
    ("joint", "cggm_sublattice", "joint"),
    ("cggm", "cggm_sublattice", "cggm"),
    ("cggm_level0", "main", "cggm"),
    ("cggm_magnitude", "main", "cggm_magnitude"),
    ("cggm_direction", "main", "cggm_direction"),
    ("cggm_paper", "main", "cggm_paper"),
    ("ogmge", "ogmge_sublattice", "ogmge"),
    ("ogmge_every1", "main", "ogmge"),
    *[(m, "main", m) for m in ("moddrop", "moddrop_p25", "cggm_moddrop", "early_fusion")],
    *[(f"unimodal_{s}", "main", f"unimodal_{s}") for s in ("t1", "t1ce", "t2", "flair")],
]
#: the rows of the old overhead tables that are variants today (same heads, cadence and voxels)
OVERHEAD_ROWS = {
    "joint (plain loss, no heads)": "plain",
    "CGGM magnitude only (grad, direction off)": "cggm_magnitude",
    "CGGM magnitude + direction (grad, gradient)": "cggm",
    "OGM-GE (alpha 0.8, GE noise)": "ogmge_level1",
    "OGM-GE, full-resolution heads (level 0)": "ogmge_every1",
    "OGM-GE, full-resolution heads on one voxel in 8, every 4th step (sublattice, observe_every=4)": "ogmge",
}


def source(what: str) -> str:
    return (
        f"transcribed from the tables of docs/benchmarks.md (now {PAGE}) written by the runs of {DATES[what]}"
    )


def section(text: str, begin: str, end: str) -> str:
    """The text between the line starting with ``begin`` and the line starting with ``end``."""
    match = re.search(rf"^{re.escape(begin)}.*?$(.*?)^{re.escape(end)}", text, re.S | re.M)
    if match is None:
        raise SystemExit(f"{PAGE}: no section between {begin!r} and {end!r}.")
    return match.group(1)


def table(text: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header line starts with ``header_start``, as dicts
    (where a column name repeats, as the memory tables' ``ratio, above idle``, the first column)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header_start)), None)
    if start is None:
        raise SystemExit(f"{PAGE}: no table starting {header_start!r}.")
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row: dict[str, str] = {}
        for name, value in zip(header, line.strip("|").split("|")):
            row.setdefault(name, value.strip())  # a repeated column name: its first column
        rows.append(row)
    return rows


def statistic(text: str) -> dict[str, Any] | None:
    """``0.961 ± 0.004`` -> mean and std; ``0.950`` (one seed) -> that seed's value; ``-`` -> None."""
    if text in ("-", ""):
        return None
    mean, _, std = text.partition("±")
    if std:
        return {"mean": float(mean), "std": float(std)}
    return {"mean": float(mean), "std": None, "per_seed": [float(mean)]}


def balance_section(text: str, name: str) -> dict[str, Any]:
    """One ``bench_balance`` section's rows by method: its main table's and Shapley table's cells,
    and each seed's mean Dice and 15-subset mean where the section has that table."""
    key = "" if name == "main" else f" {name}"
    body = section(text, f"<!-- bench_balance:begin{key} (written", f"<!-- bench_balance:end{key} -->")
    rows = {row["method"]: {"main": row} for row in table(body, "| method | seeds | Dice TC")}
    for row in table(body, "| method | t1 |"):
        rows[row["method"]]["shapley"] = row
    if "| method | seeds | mean Dice (each seed)" in body:
        for row in table(body, "| method | seeds | mean Dice (each seed)"):
            rows[row["method"]]["each_seed"] = row
    return {"body": body, "rows": rows}


def transcribe_balance(text: str) -> dict[str, Any]:
    sections = {name: balance_section(text, name) for name in dict.fromkeys(s for _, s, _ in BALANCE_ROWS)}
    body = sections["main"]["body"]
    data_line = next(line for line in body.splitlines() if line.startswith("Data:"))
    seeds = [int(s) for s in re.search(r"seeds \[([\d, ]+)\]", data_line).group(1).split(",")]
    sequences = ["t1", "t1ce", "t2", "flair"]
    columns = {
        "dice_tc": "Dice TC", "dice_wt": "Dice WT", "dice_et": "Dice ET", "dice_mean": "mean",
        "subset_mean": "15-subset mean", "subset_ratio": "subset / all", "weakest_head": "weakest head",
    }  # fmt: skip
    variants = {}
    least = None
    for name, where, method in BALANCE_ROWS:
        cells = sections[where]["rows"][method]
        row = cells["main"]
        metrics = {key: statistic(row[column]) for key, column in columns.items()}
        if "shapley" in cells:
            metrics.update({f"shapley_{s}": statistic(cells["shapley"][s]) for s in sequences})
        if "each_seed" in cells:  # each seed's values, four decimals
            listed = [int(seed) for seed in cells["each_seed"]["seeds"].split(",")]
            if listed != seeds[: int(row["seeds"])]:
                raise SystemExit(f"{PAGE}: section {where}, row {method}: seeds {listed}, expected {seeds}.")
            for key, column in (
                ("dice_mean", "mean Dice (each seed)"),
                ("subset_mean", "15-subset mean (each seed)"),
            ):
                metrics[key]["per_seed"] = [float(v) for v in cells["each_seed"][column].split(";")]
        variant: dict[str, Any] = {
            "source": SECTIONS[where] + (f", row {method}" if method != name else ""),
            "seeds": seeds[: int(row["seeds"])],
            "epochs": int(row["epochs"]),
            "minutes_per_run": float(row["minutes per run"]),
            "metrics": {k: v for k, v in metrics.items() if v is not None},
        }
        if name != "joint":
            variant["vs_joint"] = {
                "dice_mean": statistic(row["Δ mean vs joint"]),
                "subset_mean": statistic(row["Δ subset vs joint"]),
            }
        if "shapley" in cells:
            least = cells["shapley"]["least-used sequence"]
            variant["least_used_vs_joint"] = float(cells["shapley"]["its value / joint's"].rstrip("x"))
        variants[name] = variant
    reference = re.search(r"mean over the 15 subsets (\d\.\d+)", body)
    return {
        "benchmark": "bench_balance",
        "source": source("balance"),
        "settings": {
            "data": re.search(r"Data: (.*?), one split", data_line).group(1),
            "split_seed": int(re.search(r"one split \(seed (\d+)", data_line).group(1)),
            "fractions": [
                float(f) for f in re.search(r"fractions \[([\d., ]+)\]", data_line).group(1).split(",")
            ],
            "roi": int(re.search(r"crop (\d+)\^3", data_line).group(1)),
            "val_interval": int(re.search(r"validation every (\d+) epochs", data_line).group(1)),
            "seeds": seeds,
            "reproduce": "python scripts/bench_balance.py --methods " + " ".join(variants),
        },
        "sequences": sequences,
        "least_used": least,
        "best_member_subset_mean": float(reference.group(1)) if reference else None,
        "variants": variants,
    }


def transcribe_multiview(text: str) -> dict[str, Any]:
    body = section(text, "<!-- bench_multiview:begin", "<!-- bench_multiview:end -->")
    intro = next(line for line in body.splitlines() if line.startswith("The multi-view bundle"))
    seeds = [int(s) for s in re.search(r"seeds \[([\d, ]+)\]", intro).group(1).split(",")]
    datasets = {}
    for heading in re.finditer(
        r"^### (\w+) \((\w+); views ([^;]+); (\d+) test samples per seed\)$", body, re.M
    ):
        dataset, task, views, samples = heading.groups()
        views = [v.strip() for v in views.split(",")]
        rows = table(body[heading.end() :], "| method | seeds |")
        header = list(rows[0])
        main, second = header[2], header[4]
        variants = {}
        for row in rows:
            metrics = {
                main: statistic(row[main]),
                second: statistic(row[second]),
                "subset_mean": statistic(row[f"subset mean ({main})"]),
                "weakest_head": statistic(row[f"weakest head ({main})"]),
                **{f"shapley_{v}": statistic(row[f"Shapley {v}"]) for v in views},
            }
            variant: dict[str, Any] = {
                "seeds": seeds[: int(row["seeds"])],
                "seconds_per_run": float(row["seconds per run"]),
                "metrics": {k: v for k, v in metrics.items() if v is not None},
            }
            if row["method"] != "joint":
                variant["vs_joint"] = {
                    main: statistic(row[f"Δ {main} vs joint"]),
                    second: statistic(row[f"Δ {second}"]),
                    "subset_mean": statistic(row["Δ subset"]),
                    "weakest_head": statistic(row["Δ weakest head"]),
                }
            variants[row["method"]] = variant
        datasets[dataset] = {
            "task": task,
            "views": views,
            "main_metric": main,
            "second_metric": second,
            "test_samples": int(samples),
            "variants": variants,
        }
    return {
        "benchmark": "bench_multiview",
        "source": source("multiview"),
        "settings": {
            "epochs": int(re.search(r"every run (\d+) epochs", intro).group(1)),
            "seeds": seeds,
            "reproduce": re.search(r"Reproduce: `(.*)`", body).group(1),
        },
        "datasets": datasets,
    }


def transcribe_overhead(text: str) -> dict[str, Any]:
    configurations = []
    for begin in re.finditer(
        r"^<!-- bench_overhead:begin (\S+) crop=(\d+) batch=(\d+) device=(\w+) threads=(\d+) ", text, re.M
    ):
        preset, crop, batch, device, threads = begin.groups()
        key = f"{preset} crop={crop} batch={batch} device={device} threads={threads}"
        body = section(text[begin.start() :], "<!-- bench_overhead:begin", f"<!-- bench_overhead:end {key}")
        steps = int(re.search(r"(\d+) measured steps per method", body).group(1))
        memory = {row["method"]: row for row in table(body, "| method | live: peak (MiB)")}
        rows = {}
        for row in table(body, "| method | median step (ms)"):
            name = OVERHEAD_ROWS.get(row["method"])
            if name is None:  # a row of a retired option, or one no variant runs today
                continue
            target = re.search(r"<= ([\d.]+)x", row["target"])
            rows[name] = {
                "label": row["method"],
                "median_ms": float(row["median step (ms)"]),
                "p10_ms": float(row["p10"]),
                "p90_ms": float(row["p90"]),
                "ratio": float(row["ratio to joint"]),
                "mean_ratio": float(row["ratio of mean steps"]),
                "judged_on": "mean" if "(mean)" in row["target"] else "median",
                "target": float(target.group(1)) if target else None,
                "memory_ratio": float(memory[row["method"]]["ratio, above idle"]),
            }
        worst = max(
            (r for label, r in memory.items() if label != "joint (plain loss, no heads)"),
            key=lambda r: float(r["ratio, above idle"]),
        )
        configurations.append(
            {
                "key": key,
                "title": f"`{preset}`, {threads} thread{'s' if int(threads) > 1 else ''}",
                "settings": {
                    "preset": preset,
                    "crop": int(crop),
                    "batch": int(batch),
                    "device": device,
                    "threads": int(threads),
                    "steps": steps,
                },  # fmt: skip
                "source": source("overhead"),
                "baseline": "plain",
                "rows": rows,
                "memory_target": 1.05,
                "memory_worst": {
                    "row": OVERHEAD_ROWS.get(worst["method"], worst["method"]),
                    "ratio": float(worst["ratio, above idle"]),
                },
            }
        )
    return {"benchmark": "bench_overhead", "source": source("overhead"), "configurations": configurations}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page", type=Path, default=ROOT / PAGE, help=f"the page to read (default {PAGE})")
    p.add_argument("--results", type=Path, default=RESULTS, help="where to write (default docs/results)")
    args = p.parse_args(argv)
    text = args.page.read_text()
    for name, data in (
        ("balance", transcribe_balance(text)),
        ("multiview", transcribe_multiview(text)),
        ("overhead", transcribe_overhead(text)),
    ):
        write_results(args.results / f"{name}.json", data)
        print(f"wrote {args.results / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
