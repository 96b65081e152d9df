"""SQL console: results, inline errors, read-only by default, history, cancel, export."""

from __future__ import annotations

import json
from collections.abc import Callable

from textual.widgets import DataTable, Static, TextArea

from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.sql import SqlScreen

from .scenes import settle


async def _sql(app: EfficientLLMApp, pilot, text: str) -> SqlScreen:  # type: ignore[no-untyped-def]
    if not isinstance(app.screen, SqlScreen):
        await settle(app, pilot)
        await pilot.press("f5")
        await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, SqlScreen)
    screen.query_one("#editor", TextArea).text = text
    await pilot.press("ctrl+r")
    await settle(app, pilot)
    return screen


def _error(screen: SqlScreen) -> str:
    return str(screen.query_one("#sql-error", Static).render())


async def test_query_error_and_read_only(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="sql")
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await _sql(
            app, pilot, "select technique, it from run_metrics where it is not null order by it"
        )
        table = screen.query_one("#results", DataTable)
        assert table.row_count == 3
        assert [str(c) for c in table.get_row_at(0)] == ["fp32", "101.5"]
        assert "3 row(s)" in str(screen.query_one("#sql-status", Static).render())
        screen = await _sql(app, pilot, "selec 1")
        assert "Parser Error" in _error(screen) and table.row_count == 3
        screen = await _sql(app, pilot, "delete from runs")
        assert "read-only" in _error(screen) and "ctrl+t" in _error(screen)
        assert len(Store(app.db_path).run_ids()) == 5
        await pilot.press("ctrl+t")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert not screen.read_only
        assert "WRITE" in str(screen.query_one("#sql-status", Static).render())
        screen = await _sql(app, pilot, "delete from runs where status = 'oom'")
        assert _error(screen) == ""
        assert len(Store(app.db_path).run_ids()) == 4


async def test_history_is_kept_and_export_writes(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="sql")
    out = app.home / "out.json"
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _sql(app, pilot, "select 1 as one")
        screen = await _sql(app, pilot, "select run_id from runs order by run_id")
        await pilot.press("ctrl+up")
        editor = screen.query_one("#editor", TextArea)
        assert editor.text == "select run_id from runs order by run_id"
        await pilot.press("ctrl+up")
        assert screen.query_one("#editor", TextArea).text == "select 1 as one"
        await pilot.press("ctrl+s")
        await pilot.pause()
        export = app.screen
        export.query_one("#export-path").value = str(out)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await settle(app, pilot)
        assert len(json.loads(out.read_text())) == 5
    history = json.loads((app.home / "sql_history.json").read_text())
    assert [e["sql"] for e in history["entries"]][-2:] == [
        "select 1 as one",
        "select run_id from runs order by run_id",
    ]
    again = new_app(seed=False, mode="sql")
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(again, pilot)
        editor = again.screen.query_one("#editor", TextArea)
        assert editor.text == "select run_id from runs order by run_id"


async def test_long_query_cancels(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="sql")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, SqlScreen)
        screen.query_one("#editor", TextArea).text = "select count(*) from range(100000000000)"
        await pilot.press("ctrl+r")
        await pilot.pause(0.1)
        assert screen.running is not None
        query = screen.running
        await pilot.press("escape")
        await pilot.pause()
        assert screen.running is None and query.cancelled
        assert "cancelled" in str(screen.query_one("#sql-status", Static).render())
        await settle(app, pilot)  # the interrupted worker ends promptly


async def test_read_only_console_writes_no_file(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="sql")
    out = app.home / "out.csv"
    db_bytes = app.db_path.read_bytes()
    async with app.run_test(size=(120, 36)) as pilot:
        refused = {
            f"copy (select 42 as x) to '{out}'": f"read-only: cannot use file {out}: ",
            "set threads = 1": "read-only: setting threads cannot be changed in read-only mode",
            "select * from read_csv('/etc/passwd')": "read-only: cannot use file /etc/passwd: ",
            f"attach '{app.home}/new.duckdb' as n": f"read-only: cannot use file {app.home}/new",
        }
        for sql, said in refused.items():
            screen = await _sql(app, pilot, sql)
            assert _error(screen).startswith("⚠ " + said), _error(screen)
            assert _error(screen).endswith(" — writes need write mode: ctrl+t")
            status = str(screen.query_one("#sql-status", Static).render())
            assert "read-only" in status and "failed" in status
        # The console's own history is the only file it keeps; the database is untouched.
        assert sorted(p.name for p in app.home.iterdir()) == [
            "efficientllm.duckdb", "sql_history.json"]
        assert app.db_path.read_bytes() == db_bytes
        screen = await _sql(app, pilot, "select count(*) as n from run_metrics")
        assert _error(screen) == ""
        assert [str(c) for c in screen.query_one("#results", DataTable).get_row_at(0)] == ["5"]
        await pilot.press("ctrl+t")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        screen = await _sql(app, pilot, f"copy (select 42 as x) to '{out}'")
        assert _error(screen) == ""
        assert out.read_text() == "x\n42\n"


async def test_schema_tree_highlighting_completion_and_select_all(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    from efficientllm_tui.tui.widgets.schema_tree import SchemaTree
    from efficientllm_tui.tui.widgets.sql_editor import SqlEditor

    app = new_app(mode="sql")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        editor = screen.query_one("#editor", SqlEditor)
        assert editor.language == "sql"  # tree-sitter highlighting is installed and on
        tree = screen.query_one("#schema", SchemaTree)
        assert tree.display
        tables, views = tree.root.children
        assert [str(n.label) for n in views.children] == ["leaderboard", "run_metrics"]
        runs = next(n for n in tables.children if str(n.label) == "runs")
        assert "run_id VARCHAR" in [str(c.label) for c in runs.children]
        # tab after a prefix completes the name; the subtitle says what would complete
        editor.text = "select * from run_m"
        editor.cursor_location = (0, len(editor.text))
        await pilot.pause()
        assert editor.border_subtitle == "tab: run_metrics"
        await pilot.press("tab")
        assert editor.text == "select * from run_metrics"
        editor.text = "select runs.sta"
        editor.cursor_location = (0, len(editor.text))
        await pilot.press("ctrl+space")
        await pilot.pause()
        assert editor.text == "select runs.sta"
        assert editor.border_subtitle == "tab: started_at status"
        editor.text = "select 1\n"
        editor.cursor_location = (1, 0)
        await pilot.press("tab")  # nothing to complete: tab indents as before
        assert editor.text == "select 1\n    "
        await pilot.press("ctrl+a")
        assert editor.selected_text == "select 1\n    "
        await pilot.press("ctrl+b")
        assert not tree.display


async def test_each_statement_result_has_a_tab_and_values_read_as_the_cli(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    from textual.widgets import Tabs

    app = new_app(mode="sql")
    async with app.run_test(size=(80, 24)) as pilot:
        assert not app.screen.query_one("#schema").display  # no room at 80 columns
        screen = await _sql(app, pilot, "select 1 as a; select INTERVAL 90 MINUTE as i, "
                            "NULL as n, true as b, [1, NULL] as l, 1.50::DECIMAL(5,2) as d")
        table = screen.query_one("#results", DataTable)
        assert [str(c) for c in table.get_row_at(0)] == ["01:30:00", "NULL", "true",
                                                         "[1, NULL]", "1.50"]
        tabs = screen.query_one("#result-tabs", Tabs)
        assert tabs.display and tabs.tab_count == 2
        status = str(screen.query_one("#sql-status", Static).render())
        assert "statement 2 of 2, result 2 of 2 (ctrl+pgup/pgdn): 1 row(s)" in status
        await pilot.press("ctrl+pageup")
        await settle(app, pilot)
        assert [str(c) for c in table.get_row_at(0)] == ["1"]
        assert "statement 1 of 2, result 1 of 2" in str(
            screen.query_one("#sql-status", Static).render())
        screen = await _sql(app, pilot, "select 2 as b")
        assert not tabs.display
        assert "statement" not in str(screen.query_one("#sql-status", Static).render())
