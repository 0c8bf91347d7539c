"""Fill the tables of ``docs/results.md`` from the benchmark results in ``docs/results/*.json``.

Each table sits between two markers of the page, ``<!-- results:NAME:begin -->`` and
``<!-- results:NAME:end -->``; only what is between them is replaced, the prose around them is
written by hand. The tables (NAME: the file it reads):

- ``balance``: the BraTS balancing benchmark, one row per variant (``balance.json``);
- ``overhead``: the step time of each variant against plain training, per configuration, and the
  worst peak memory (``overhead.json``);
- ``multiview``: the classification and regression benchmark, each dataset's main metric and the
  subset means against joint (``multiview.json``, every dataset but mfeat);
- ``mfeat``: that benchmark on UCI Multiple Features: accuracy, the mean over the 63 view subsets,
  each view's Shapley value and the weakest view's against joint's (``multiview.json``);
- ``robust``: the robust-training benchmark, against joint training and the phantom's ceiling
  (``balance_robust.json``);
- ``step``: the training step of the robust settings against joint training (``step.json``);
- ``robust_detached`` (``docs/archive.md``): the robust-training runs whose per-sequence heads
  did not reach the encoders (``balance_robust_detached.json``).

``docs/results.md`` shows the main rows of a benchmark (``MAIN_ROWS``); the tables whose names end
in ``_more`` show the other rows, beside joint training's, in ``docs/archive.md``.

    python scripts/render_results.py            # fill docs/results.md
    python scripts/render_results.py --check    # fail if docs/results.md is not up to date; writes nothing
    python scripts/render_results.py --doc docs/archive.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, read_results  # noqa: E402

__all__ = [
    "cell",
    "delta",
    "balance_table",
    "shapley_table",
    "multiview_table",
    "mfeat_table",
    "overhead_table",
    "robust_table",
    "step_table",
    "TABLES",
    "fill",
    "render",
]

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
#: how a metric is written in a table heading
METRIC_NAMES = {"r2": "R²"}


def cell(value: dict[str, Any] | None) -> str:
    """A statistic as ``mean ± std`` (three decimals; the mean alone for one seed; ``-`` for none)."""
    if value is None:
        return "-"
    if value["std"] is None:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def delta(value: dict[str, Any] | None) -> str:
    """A paired difference as ``+mean ± std`` (``-`` where there is none)."""
    if value is None:
        return "-"
    if value["std"] is None:
        return f"{value['mean']:+.3f}"
    return f"{value['mean']:+.3f} ± {value['std']:.3f}"


def _delta_of(variant: dict[str, Any], key: str) -> str:
    """The variant's paired difference to joint on ``key`` (empty for joint itself)."""
    if "vs_joint" not in variant:
        return ""
    return delta(variant["vs_joint"].get(key))


def balance_table(data: dict[str, Any]) -> list[str]:
    """The BraTS benchmark's main table: Dice per region, the 15-subset mean, the weakest head."""
    lines = [
        "| method | seeds | Dice TC | Dice WT | Dice ET | mean | Δ mean vs joint | 15-subset mean "
        "| Δ subset vs joint | subset / all | weakest head | epochs | minutes per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in data["variants"].items():
        m = v["metrics"]
        minutes = "-" if v.get("minutes_per_run") is None else f"{v['minutes_per_run']:.1f}"
        lines.append(
            f"| {name} | {len(v['seeds'])} | {cell(m.get('dice_tc'))} | {cell(m.get('dice_wt'))} "
            f"| {cell(m.get('dice_et'))} | {cell(m.get('dice_mean'))} | {_delta_of(v, 'dice_mean')} "
            f"| {cell(m.get('subset_mean'))} | {_delta_of(v, 'subset_mean')} | {cell(m.get('subset_ratio'))} "
            f"| {cell(m.get('weakest_head'))} | {v['epochs']} | {minutes} |"
        )
    return lines


def robust_table(data: dict[str, Any]) -> list[str]:
    """The robust-training benchmark: all-sequence and 15-subset Dice, their ratio and the fraction
    of the phantom's ceiling, each sequence alone (against its own model), Δ to joint."""
    sequences = data["sequences"]
    own = data.get("unimodal_dice") or {}
    lines = [
        "| setting | seeds | validation: all / 15-subset | all-sequence Dice | Δ vs joint | 15-subset mean "
        "| Δ vs joint | subset / all | of the ceiling | "
        + " | ".join(f"{s} alone" for s in sequences)
        + " | epochs | minutes per run |",
        "|---|" + "---|" * (10 + len(sequences)),
    ]
    for name, v in data["variants"].items():
        if name.startswith(("unimodal_", "dedicated_")):
            continue
        m = v["metrics"]
        alone = []
        for s in sequences:
            value = m.get(f"alone_{s}")
            text = cell(value)
            if value is not None and own.get(s):
                text += f" ({value['mean'] / own[s]:.2f}x)"
            alone.append(text)
        fraction = "-" if v.get("ceiling_fraction") is None else f"{v['ceiling_fraction']:.2f}"
        minutes = "-" if v.get("minutes_per_run") is None else f"{v['minutes_per_run']:.1f}"
        val_all, val_subset = m.get("val_dice_mean"), m.get("val_subset_mean")
        validation = (
            "-"
            if val_all is None or val_subset is None
            else f"{val_all['mean']:.3f} / {val_subset['mean']:.3f}"
        )
        lines.append(
            f"| {name} | {len(v['seeds'])} | {validation} | {cell(m.get('dice_mean'))} "
            f"| {_delta_of(v, 'dice_mean')} "
            f"| {cell(m.get('subset_mean'))} | {_delta_of(v, 'subset_mean')} | {cell(m.get('subset_ratio'))} "
            f"| {fraction} | " + " | ".join(alone) + f" | {v['epochs']} | {minutes} |"
        )
    return lines


def step_table(data: dict[str, Any]) -> list[str]:
    """The training step of each variant (the bundle's own trainer) against joint training's."""
    settings = data["settings"]
    lines = [
        f"| variant | median step, crop {settings['crop']}^3, {settings['threads']} thread(s) | vs joint |",
        "|---|---|---|",
    ]
    for name, row in data["variants"].items():
        lines.append(f"| {name} | {row['median_s'] * 1000:.0f} ms | {row['ratio_to_joint']:.2f}x |")
    return lines


def shapley_table(data: dict[str, Any]) -> list[str]:
    """Each sequence's Shapley value for the mean Dice, per variant with every sequence, and the
    least-used sequence's (joint's lowest) value against joint's."""
    sequences = data["sequences"]
    least = data.get("least_used") or "-"
    lines = [
        "| method | " + " | ".join(sequences) + " | least-used sequence | its value / joint's |",
        "|---|" + "---|" * (len(sequences) + 2),
    ]
    for name, v in data["variants"].items():
        values = [v["metrics"].get(f"shapley_{s}") for s in sequences]
        if any(value is None for value in values):  # a unimodal run: one sequence
            continue
        ratio = v.get("least_used_vs_joint")
        gain = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"| {name} | " + " | ".join(cell(value) for value in values) + f" | {least} | {gain} |")
    return lines


#: the datasets of the multi-view benchmark with a table of their own
OWN_TABLE = ("mfeat",)


def multiview_table(data: dict[str, Any]) -> list[str]:
    """The classification and regression benchmark in one table: each dataset's main metric and its
    paired difference to joint, and the differences of the subset means (datasets of
    :data:`OWN_TABLE` left out)."""
    datasets = {k: d for k, d in data["datasets"].items() if k not in OWN_TABLE}
    names = list(dict.fromkeys(name for d in datasets.values() for name in d["variants"]))
    header = "| variant | "
    for dataset, d in datasets.items():
        header += f"{dataset} {METRIC_NAMES.get(d['main_metric'], d['main_metric'])} | Δ vs joint | "
    lines = [
        header + f"Δ subset mean ({' / '.join(datasets)}) |",
        "|---|" + "---|" * (2 * len(datasets) + 1),
    ]
    for name in names:
        cells, subsets = [], []
        for d in datasets.values():
            v = d["variants"].get(name)
            if v is None:
                cells += ["-", "-"]
                subsets.append("-")
                continue
            cells += [cell(v["metrics"].get(d["main_metric"])), _delta_of(v, d["main_metric"])]
            subset = v.get("vs_joint", {}).get("subset_mean")
            subsets.append("-" if subset is None else f"{subset['mean']:+.3f}")
        subset_cell = "" if name == "joint" else " / ".join(subsets)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {subset_cell} |")
    return lines


def mfeat_table(data: dict[str, Any]) -> list[str]:
    """UCI Multiple Features: accuracy and the mean over every view subset, each against joint,
    each view's Shapley value, and the weakest view's (joint's lowest) against joint's."""
    d = data["datasets"].get(OWN_TABLE[0])
    if d is None or "joint" not in d["variants"]:
        return [f"(no {OWN_TABLE[0]} runs with joint training in the results)"]
    views, main = d["views"], d["main_metric"]
    joint = d["variants"]["joint"]["metrics"]
    weakest = min(views, key=lambda view: joint[f"shapley_{view}"]["mean"])
    reference = joint[f"shapley_{weakest}"]["mean"]
    lines = [
        f"| variant | seeds | {main} | Δ vs joint | {2 ** len(views) - 1}-subset mean | Δ vs joint | "
        + " | ".join(f"Shapley {view}" for view in views)
        + f" | {weakest} (weakest): value / joint's |",
        "|---|" + "---|" * (6 + len(views)),
    ]
    for name, v in d["variants"].items():
        m = v["metrics"]
        ratio = m[f"shapley_{weakest}"]["mean"] / reference if reference > 0.005 else math.nan
        lines.append(
            f"| {name} | {len(v['seeds'])} | {cell(m.get(main))} | {_delta_of(v, main)} "
            f"| {cell(m.get('subset_mean'))} | {_delta_of(v, 'subset_mean')} | "
            + " | ".join(cell(m.get(f"shapley_{view}")) for view in views)
            + (" | - |" if math.isnan(ratio) else f" | {ratio:.2f}x |")
        )
    return lines


def _ratio_cell(row: dict[str, Any] | None) -> str:
    """A row's judged step ratio: the median step's, or for a variant whose heads skip steps by
    design the mean step's (its median step is one without the heads), and whether it missed."""
    if row is None:
        return "-"
    if row["judged_on"] == "mean":
        text = f"{row['mean_ratio']:.3f}x (mean; median {row['ratio']:.3f}x)"
        judged = row["mean_ratio"]
    else:
        text, judged = f"{row['ratio']:.3f}x", row["ratio"]
    return text + (", **missed**" if row.get("target") is not None and judged > row["target"] else "")


def overhead_table(data: dict[str, Any]) -> list[str]:
    """Each variant's step time against the baseline's, one column per configuration, and the
    worst row's peak memory above an idle process against the baseline's."""
    configurations = data["configurations"]
    names = list(dict.fromkeys(name for c in configurations for name in c["rows"]))
    targets = {
        name: next((c["rows"][name]["target"] for c in configurations if name in c["rows"]), None)
        for name in names
    }
    baseline = configurations[0]["baseline"]
    lines = [
        "| variant | " + " | ".join(c["title"] for c in configurations) + " | target |",
        "|---|" + "---|" * (len(configurations) + 1),
        f"| {baseline}: median step | "
        + " | ".join(f"{c['rows'][c['baseline']]['median_ms']:.0f} ms" for c in configurations)
        + " |  |",
    ]
    for name in (n for n in names if n != baseline):
        target = "" if targets[name] is None else f"≤ {targets[name]:.2f}x"
        cells = [_ratio_cell(c["rows"].get(name)) for c in configurations]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")
    memory = [
        f"{c['memory_worst']['ratio']:.3f}x"
        + (", **missed**" if c["memory_worst"]["ratio"] > c["memory_target"] else "")
        for c in configurations
    ]
    lines.append(
        "| peak memory above idle, worst row | "
        + " | ".join(memory)
        + f" | ≤ {configurations[0]['memory_target']:.2f}x |"
    )
    return lines


#: table name -> (results file, the function that renders it)
TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "balance": ("balance.json", balance_table),
    "balance_more": ("balance.json", balance_table),
    "overhead": ("overhead.json", overhead_table),
    "multiview": ("multiview.json", multiview_table),
    "multiview_more": ("multiview.json", multiview_table),
    "mfeat": ("multiview.json", mfeat_table),
    "mfeat_more": ("multiview.json", mfeat_table),
    "robust": ("balance_robust.json", robust_table),
    "robust_more": ("balance_robust.json", robust_table),
    "step": ("step.json", step_table),
    "robust_detached": ("balance_robust_detached.json", robust_table),
}
#: the rows ``docs/results.md`` shows of each benchmark; its ``_more`` table shows the others
MAIN_ROWS: dict[str, tuple[str, ...]] = {
    "balance": ("joint", "cggm", "ogmge", "moddrop", "moddrop_p25", "early_fusion"),
    "multiview": ("joint", "ogmge", "cggm", "subset", "robust", "cggm_robust", "mmpareto_robust"),
    "robust": ("joint", "moddrop", "two_view_k4", "mmpareto", "subset_masked"),
}  # fmt: skip
MAIN_ROWS["mfeat"] = MAIN_ROWS["multiview"]
#: page -> the tables it holds (the archive keeps the other rows and superseded runs)
PAGES: dict[str, tuple[str, ...]] = {
    "results.md": ("balance", "overhead", "multiview", "mfeat", "robust", "step"),
    "archive.md": ("balance_more", "multiview_more", "mfeat_more", "robust_more", "robust_detached"),
}


def select_rows(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``data`` with the variants table ``name`` shows: the benchmark's :data:`MAIN_ROWS`, or for a
    ``_more`` table the others and joint; every variant for a table without main rows."""
    base = name.removesuffix("_more")
    if base not in MAIN_ROWS:
        return data
    main = MAIN_ROWS[base]

    def keep(variant: str) -> bool:
        return variant in main if name == base else variant == "joint" or variant not in main

    def pick(variants: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in variants.items() if keep(k)}

    out = dict(data)
    if "variants" in data:
        out["variants"] = pick(data["variants"])
    if "datasets" in data:
        out["datasets"] = {k: {**d, "variants": pick(d["variants"])} for k, d in data["datasets"].items()}
    return out


def render(name: str, results: Path) -> str:
    """The text between table ``name``'s markers: the table and where its numbers come from."""
    file, table = TABLES[name]
    data = select_rows(read_results(results / file), name)
    # where each number came from (runs, dates) stays in the JSON file; the page names the file
    return "\n".join(["", *table(data), "", f"Data: `docs/results/{file}`.", ""])


def _markers(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    return (
        re.compile(rf"<!--\s*results:{name}:begin\b[^>]*-->"),
        re.compile(rf"<!--\s*results:{name}:end\b[^>]*-->"),
    )


def fill(text: str, name: str, body: str, doc: Path | str = "the page") -> str:
    """``text`` with what is between table ``name``'s markers replaced by ``body``.

    Raises:
        ValueError: a marker missing or repeated, or the end before the begin (the message names
            the page, the table and the markers expected).
    """
    begin, end = _markers(name)
    begins, ends = list(begin.finditer(text)), list(end.finditer(text))
    expected = f"<!-- results:{name}:begin --> ... <!-- results:{name}:end -->"
    if len(begins) != 1 or len(ends) != 1:
        raise ValueError(
            f"{doc}: table {name!r} needs one begin and one end marker, {expected}; found "
            f"{len(begins)} begin and {len(ends)} end marker(s)."
        )
    if ends[0].start() < begins[0].end():
        raise ValueError(f"{doc}: table {name!r}: its end marker comes before its begin marker ({expected}).")
    return text[: begins[0].end()] + body + text[ends[0].start() :]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=DOC, help="the page to fill (default docs/results.md)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default docs/results)")
    p.add_argument(
        "--only", nargs="+", choices=list(TABLES), default=None, metavar="NAME",
        help="the tables to fill, of " + ", ".join(TABLES) + " (default: all the page holds)",
    )  # fmt: skip
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a table is not what the results give"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.doc.is_file():
        raise SystemExit(f"render_results: {args.doc}: no such page.")
    args.only = args.only or list(PAGES.get(args.doc.name, TABLES))
    before = args.doc.read_text()
    text = before
    stale = []
    try:
        for name in args.only:
            filled = fill(text, name, render(name, args.results), args.doc)
            if filled != text:
                stale.append(name)
            text = filled
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"render_results: {err}") from None
    if args.check:
        if stale:
            print(
                f"{args.doc}: tables not up to date with {args.results}: {', '.join(stale)}", file=sys.stderr
            )
            return 1
        print(f"{args.doc}: {', '.join(args.only)} up to date")
        return 0
    if text != before:
        args.doc.write_text(text)
    print(f"{args.doc}: filled {', '.join(args.only)}" + (f" ({', '.join(stale)} changed)" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
