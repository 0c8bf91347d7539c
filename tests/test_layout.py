"""The package's layout: the generic core imports no application, no import cycle, unique module names.

Imports are read from the source (``ast``), at module level and inside functions alike, so a cycle
hidden in a function is found too.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cggm_seg"
CORE = (
    "cggm_seg.balancing",
    "cggm_seg.handlers",
    "cggm_seg.networks",
    "cggm_seg.evaluation",
    "cggm_seg.errors",
)
#: kept for one release so that old import paths keep working; they import the applications
COMPAT = ("cggm_seg.data",)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The cggm_seg modules ``path`` imports (``from pkg import name`` counts the submodule
    ``pkg.name`` where there is one, else ``pkg``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cggm_seg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cggm_seg"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_core_imports_no_application():
    offending = {
        name: sorted(m for m in _imports(path) if _in(m, ("cggm_seg.apps",) + COMPAT))
        for name, path in MODULES.items()
        if _in(name, CORE)
    }
    assert {k: v for k, v in offending.items() if v} == {}
    assert {"cggm_seg.apps.brats.phantom", "cggm_seg.apps.multiview.views"} <= set(MODULES)  # found


def test_no_import_cycles():
    # a package's __init__ re-exports its submodules: the edge submodule -> own package is the
    # same import read the other way, so a module's imports of its own ancestors are left out
    graph = {
        name: {m for m in _imports(path) if not name.startswith(m + ".") and m != name}
        for name, path in MODULES.items()
        if not _in(name, COMPAT)
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_a_hidden_cycle_would_be_found(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from cggm_seg.apps.multiview.views import load_views\n")
    assert _imports(a) == {"cggm_seg.apps.multiview.views"}


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    assert [n for n, count in names.items() if count > 1] == []
