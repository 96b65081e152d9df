"""Import boundaries of the profiling package (DESIGN.md section 2)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import profiling

PKG = Path(profiling.__file__).parent
FORBIDDEN = ("efficientllm_tui", "runners", "textual", "duckdb", "torch")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_forbidden_imports_in_source() -> None:
    for path in sorted(PKG.glob("*.py")):
        for name in imported_modules(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_at_most_one_module_imports_pynvml() -> None:
    users = [p.name for p in PKG.glob("*.py")
             if any(n.split(".")[0] == "pynvml" for n in imported_modules(p))]
    assert len(users) <= 1, users


def test_importing_every_module_loads_nothing_forbidden() -> None:
    modules = sorted(f"profiling.{p.stem}" for p in PKG.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, stdin=subprocess.DEVNULL)
    assert json.loads(out.stdout) == []
