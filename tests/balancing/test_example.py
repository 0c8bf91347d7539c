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
