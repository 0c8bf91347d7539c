"""Runs the training loop of docs/reuse.md, so that the documented example cannot rot."""

import math
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reuse.md"
MARKER = "<!-- example: executed by tests/balancing/test_example.py -->"


def test_documented_loop_runs(capsys):
    text = DOC.read_text()
    match = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.DOTALL)
    assert match, f"the example block after {MARKER!r} is missing from {DOC}"
    namespace: dict = {"__name__": "balancing_example"}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    cggm = namespace["cggm"]
    assert cggm.tracker.step == 3 * 8
    assert all(math.isfinite(v) for v in cggm.stats.values())
    assert {"B_clinical", "cos_labs", "L_gm"} <= set(cggm.stats)
    assert set(namespace["checkpoint"]["cggm"]["tracker"]["modalities"]) == {"clinical", "labs", "imaging"}
    assert capsys.readouterr().out.count("\n") == 3
    lrs = [g["lr"] for g in namespace["optimizer"].param_groups]
    assert lrs == [1e-2] * len(lrs)


def test_the_documented_loop_shows_balancing_at_work(capsys):
    """B leaves 1 within the example's 24 iterations, and the tracker's history is a list."""
    text = DOC.read_text()
    match = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.DOTALL)
    namespace: dict = {"__name__": "balancing_example"}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    history = namespace["cggm"].tracker.history
    assert len(history[9::3]) == 5  # updates 10, 13, ..., 22
    assert any(abs(h["B_clinical"] - 1.0) > 0.05 for h in history)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert "'B_clinical': 1.0," not in printed, printed
