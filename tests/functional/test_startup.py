"""Start-up: the path from `efficientllm` to the first frame holds nothing heavy (issue 17).

Users open the app many times a day over SSH, so the first frame waits on no database, no
numeric library and no worker: benchmarks/bench_tui.py measures it, these tests keep it so.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from efficientllm_tui.tui.app import EfficientLLMApp
from profiling.sample import Sample

ROOT = Path(__file__).resolve().parents[2]


def test_the_tui_command_imports_no_database_or_numeric_library() -> None:
    # What `efficientllm` imports before the app's first frame: the CLI, the tui command,
    # the app and its first screen.
    code = (
        "import sys\n"
        "import efficientllm_tui.cli, efficientllm_tui.commands.tui\n"
        "import efficientllm_tui.tui.app, efficientllm_tui.tui.screens.dashboard\n"
        "print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy', 'pandas', 'torch')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


async def test_start_up_workers_begin_after_the_first_frame(tmp_path: Path) -> None:
    opened: list[float] = []
    painted: list[float] = []

    def source(since_ns: int | None) -> Iterator[Sample]:
        opened.append(time.monotonic())
        return iter(())

    class Probe(EfficientLLMApp):
        def on_mount(self) -> None:  # runs after EfficientLLMApp.on_mount (Textual calls both)
            self.call_after_refresh(lambda: painted.append(time.monotonic()))

    app = Probe(tmp_path / "e.duckdb", tmp_path, sample_source=source, watch_runs=False,
                recover=False)
    async with app.run_test(size=(120, 36)) as pilot:
        end = time.monotonic() + 10
        while not opened and time.monotonic() < end:
            await pilot.pause(0.02)
    assert len(painted) == 1
    assert opened, "the sample feed never opened"
    assert opened[0] >= painted[0]
