"""Time the phantom generator and record the result in docs/data.md.

Generates one warm-up case (it loads the nilearn templates), then ``--cases`` cases, timing the
generation alone and generation plus writing the NIfTI files, and replaces the section between
the ``bench_phantom`` markers of ``--doc`` with a markdown table of the timings, the machine and
the settings.

    python scripts/bench_phantom.py --cases 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cggm_seg.apps.brats.phantom import PhantomConfig, make_phantom_case, phantom_case_ids, write_phantom_case

BEGIN = "<!-- bench_phantom:begin (written by scripts/bench_phantom.py) -->"
END = "<!-- bench_phantom:end -->"


def run(cases: int, seed: int, spacing: float, layout: str) -> tuple[dict[str, list[float]], tuple[int, ...]]:
    """Seconds per case for generation only and for generation plus writing; the volume shape."""
    config = PhantomConfig(spacing=spacing)
    warm_up = make_phantom_case(np.random.default_rng([seed, cases]), config)  # templates, caches
    timings: dict[str, list[float]] = {"generate": [], "generate + write": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, case_id in enumerate(phantom_case_ids(cases, layout)):
            start = time.perf_counter()
            case = make_phantom_case(np.random.default_rng([seed, i]), config)
            generated = time.perf_counter()
            write_phantom_case(tmp, case_id, case, layout)
            written = time.perf_counter()
            timings["generate"].append(generated - start)
            timings["generate + write"].append(written - start)
    return timings, warm_up.label.shape


def markdown(
    timings: dict[str, list[float]],
    shape: tuple[int, ...],
    cases: int,
    seed: int,
    spacing: float,
    layout: str,
) -> str:
    lines = [
        BEGIN,
        f"{cases} cases after one warm-up; `PhantomConfig(spacing={spacing})`, volume "
        f"{' x '.join(map(str, shape))}, layout `{layout}`, seed {seed}.",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; load average {os.getloadavg()[0]:.1f} when it finished "
        "(other processes share the cores).",
        "",
        "| seconds per case | median | min | max |",
        "|---|---|---|---|",
    ]
    for name, values in timings.items():
        lines.append(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    lines.append(END)
    return "\n".join(lines)


def update_doc(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="cases to time (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2.0)")
    parser.add_argument("--layout", default="brats2021", choices=["brats2021", "brats2023", "msd"])
    parser.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "data.md")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")

    timings, shape = run(args.cases, args.seed, args.spacing, args.layout)
    section = markdown(timings, shape, args.cases, args.seed, args.spacing, args.layout)
    print(section)
    if not args.no_doc:
        update_doc(args.doc, section)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
