"""The architecture boundaries of DESIGN.md section 2, checked rather than hoped for."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("efficientllm_tui", "profiling", "runners")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> dict[Path, set[str]]:
    return {p: _imports(p) for p in sorted((ROOT / package).rglob("*.py"))}


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_exactly_one_module_imports_duckdb() -> None:
    users = [p.relative_to(ROOT).as_posix() for pkg in PACKAGES
             for p, names in _modules(pkg).items() if "duckdb" in _top(names)]
    assert users == ["efficientllm_tui/store/db.py"]


def test_only_the_tui_imports_textual() -> None:
    """The headless layer (runs, store, live, the CLI) never imports Textual: both faces
    drive it, and the CLI must start where Textual is slow to load."""
    users = sorted({p.relative_to(ROOT).parts[1] for pkg in PACKAGES
                    for p, names in _modules(pkg).items() if "textual" in _top(names)})
    assert users == ["tui"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports(path: Path) -> set[str]:
    """Modules a file imports anywhere (lazy imports in functions too), `from a import b`
    counted as `a.b` when that is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_two_files_import_each_other() -> None:
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            graph[_module_name(path)] = _all_imports(path)
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if b in graph and b != a and a in graph[b]
                    and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert pairs == []


def test_at_most_one_module_imports_pynvml() -> None:
    users = [p.relative_to(ROOT).as_posix() for pkg in PACKAGES
             for p, names in _modules(pkg).items() if "pynvml" in _top(names)]
    assert users in ([], ["profiling/backends/nvml.py"])


@pytest.mark.parametrize("forbidden", ["efficientllm_tui", "runners", "textual", "duckdb",
                                       "torch"])
def test_profiling_stays_independent(forbidden: str) -> None:
    for path, names in _modules("profiling").items():
        assert forbidden not in _top(names), f"{path} imports {forbidden}"


@pytest.mark.parametrize("forbidden", ["efficientllm_tui", "textual", "duckdb"])
def test_runners_never_import_the_app(forbidden: str) -> None:
    for path, names in _modules("runners").items():
        assert forbidden not in _top(names), f"{path} imports {forbidden}"


APP_RUNNER_MODULES = {"runners.protocol", "runners.errors", "runners.params", "runners.preflight",
                      "runners.models.catalog", "runners.models.cards", "runners.distributed",
                      "runners.rank_merge"}
"""The stdlib-level runner modules the app may import: the protocol, the schema and checks
that refuse bad input before a runner starts, the typed catalog, and how a multi-device run
is launched and its ranks' records combined (torch is imported inside the functions that
run in a runner only)."""


def _runner_imports(path: Path) -> set[str]:
    """Runner modules a file imports: `from runners.models import catalog` counted as
    `runners.models.catalog` (packages on the way are not counted)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "runners")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "runners":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                names.add(full if full in APP_RUNNER_MODULES or node.module in ("runners",
                                                                               "runners.models")
                          else node.module)
    return names


def test_app_imports_only_the_stdlib_runner_modules() -> None:
    for path in sorted((ROOT / "efficientllm_tui").rglob("*.py")):
        bad = _runner_imports(path) - APP_RUNNER_MODULES
        assert not bad, f"{path} imports {bad}"


_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
      ('torch', 'transformers', 'peft', 'optimum', 'textual', 'duckdb', 'pynvml'))))
"""


def _loaded_after(*modules: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True,
                         text=True, check=True, cwd=ROOT, timeout=120)
    return {m.split(".")[0] for m in json.loads(out.stdout)}


def test_runner_modules_of_the_app_load_nothing_heavy() -> None:
    assert _loaded_after(*sorted(APP_RUNNER_MODULES)) == set()


def test_app_starts_without_the_runner_stack() -> None:
    loaded = _loaded_after("efficientllm_tui.cli", "efficientllm_tui.commands.launch",
                           "efficientllm_tui.commands.reads",
                           "efficientllm_tui.tui.app")
    assert not loaded & {"torch", "transformers", "peft", "optimum"}


def test_profiling_loads_no_app_stack() -> None:
    mods = [_module_name(p) for p in sorted((ROOT / "profiling").rglob("*.py"))
            if p.stem not in ("__init__", "__main__", "nvml")]
    assert not _loaded_after(*mods) & {"torch", "textual", "duckdb"}


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
