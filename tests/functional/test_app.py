"""App-wide behaviour: command palette, error notifications, imports, themes, resize."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from textual.widgets import Static

from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.dashboard import DashboardScreen

from .scenes import make_app, settle


def test_importing_the_app_loads_no_heavy_module() -> None:
    code = (
        "import sys, efficientllm_tui.tui.app as a\n"
        "for m in ('dashboard', 'launch', 'runs', 'detail', 'compare', 'sql', 'study'):\n"
        "    __import__('efficientllm_tui.tui.screens.' + m)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'duckdb', 'pyarrow')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"


async def test_palette_offers_screens_and_keys(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Go to Runs", "Go to SQL", "Window", "Stop run", "Toggle dark/light"} <= titles
        await pilot.press("f3")
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Mark", "Sort", "Delete", "Compare"} <= titles
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Go to SQL")
        command.callback()
        await settle(app, pilot)
        assert app.current_mode == "sql"


async def test_a_corrupt_database_is_a_notification(tmp_path: Path) -> None:
    app, feed = make_app(tmp_path / "home", seed=False)
    app.db_path.write_bytes(b"this is not a duckdb file" * 100)
    app._recover = True  # the startup worker opens the file
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.pause(0.1)
            messages = [n.message for n in app._notifications]
            assert any("not a readable DuckDB database" in m for m in messages), messages
            assert app.is_running and isinstance(app.screen, DashboardScreen)
            await pilot.press("3")
            await settle(app, pilot)
            assert app.is_running
            # The Runs screen says its page failed (and stops waiting) instead of "loading…".
            status = str(app.screen.query_one("#runs-status", Static).render())
            assert "could not load runs" in status and "r retries" in status, status
            assert not app.screen.pending
    finally:
        feed.stop()


async def test_light_theme_and_resize(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(active=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot, active=1)
        app.toggle_dark()
        await pilot.resize_terminal(80, 24)
        await settle(app, pilot)
        assert app.theme == "textual-light"
        assert "-narrow" in app.screen.classes and "-short" in app.screen.classes
        assert "SIMULATED" in app.export_screenshot()
        await pilot.resize_terminal(200, 60)
        await settle(app, pilot)
        assert "-wide" in app.screen.classes
