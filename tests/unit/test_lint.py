"""The house lint rules of pyproject.toml ([tool.ruff]), checked on every test run: import
order, line length, the pyflakes errors and the banned imports that keep pynvml inside
profiling/backends/nvml.py and duckdb inside efficientllm_tui/store/db.py; and the type check
([tool.mypy]: the app and profiling, and what they import of the runners)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it is part of the test extras "
                    "(pip install -e '.[test]')")
    out = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-1000:]


def test_mypy_finds_nothing() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.fail("mypy is not installed: it is part of the test extras "
                    "(pip install -e '.[test]')")
    out = subprocess.run([mypy, "--no-incremental"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-1000:]
