"""Benchmark results as data: the statistics of per-seed values, and the JSON files of ``docs/results/``.

Every figure of a results file is a *statistic*: ``{"mean", "std", "per_seed"}``, the mean and
population standard deviation over the seeds (``std`` is ``null`` for a single seed), and the
value of each seed in the order of the variant's ``seeds`` (``null`` where a seed has none;
absent where the file was transcribed from a page that did not give them). A paired difference
to joint training is a statistic of the per-seed differences. ``render_results.py`` turns the
files into the tables of ``docs/results.md``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "stat", "paired_stat", "dumps", "write_results", "read_results"]

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _present(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def stat(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean and population std of ``values`` (one per seed; ``None`` or NaN: that seed has none).

    Returns:
        ``{"mean", "std", "per_seed"}`` (``std`` ``None`` for one value), or ``None`` when no seed
        has a value.
    """
    per_seed = [float(v) if _present(v) else None for v in values]
    present = [v for v in per_seed if v is not None]
    if not present:
        return None
    std = statistics.pstdev(present) if len(present) > 1 else None
    return {"mean": statistics.fmean(present), "std": std, "per_seed": per_seed}


def paired_stat(values: dict[int, float], baseline: dict[int, float], seeds: Sequence[int]) -> dict | None:
    """:func:`stat` of ``values[s] - baseline[s]`` for each of ``seeds`` (``None`` where either lacks it)."""
    diffs = [
        values[s] - baseline[s] if _present(values.get(s)) and _present(baseline.get(s)) else None
        for s in seeds
    ]
    return stat(diffs)


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def dumps(value: Any, indent: str = "") -> str:
    """JSON with one key per line, except lists of plain values and short objects of plain values
    (a statistic without its seeds), which take one line each: short diffs, easy reading."""
    inner = indent + "  "
    flat = json.dumps(value, ensure_ascii=False)
    nested = isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values())
    if isinstance(value, dict) and value and (nested or len(flat) > 100):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return flat


def write_results(path: Path, data: dict[str, Any], digits: int = 6) -> None:
    """Write ``data`` to ``path`` (floats to ``digits`` decimals, NaN and inf as ``null``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(_rounded(data, digits)) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    """A results file.

    Raises:
        FileNotFoundError: no such file (the message says which script writes it).
        ValueError: not a results file (no ``benchmark`` key).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such results file; the benchmark scripts write it (bench_balance.py: "
            "balance.json, bench_multiview.py: multiview.json, bench_overhead.py: overhead.json)."
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "benchmark" not in data:
        raise ValueError(
            f"{path}: expected a JSON object with a 'benchmark' key, the file of a benchmark script."
        )
    return data
