"""Runs: the stored history; filter, sort, mark, open a run, delete with confirmation."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Input, Select, Static

from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.detail import RunDetailScreen
from efficientllm_tui.tui.screens.runs import RunsScreen
from efficientllm_tui.tui.widgets.chart import TimeChart

from .scenes import run_ids, settle

SIZE = (120, 36)


async def _runs(app: EfficientLLMApp, pilot) -> tuple[RunsScreen, DataTable]:  # type: ignore[no-untyped-def]
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    return screen, screen.query_one("#runs", DataTable)


async def _filter(app: EfficientLLMApp, pilot, text: str) -> None:  # type: ignore[no-untyped-def]
    """Type a filter and press enter (applies at once)."""
    field = app.screen.query_one("#f-text", Input)
    field.value = text
    field.focus()
    await pilot.press("enter")
    await settle(app, pilot)


def _column(table: DataTable, key: str) -> list[str]:
    return [str(table.get_cell(row, key)) for row in table.rows]


async def test_lists_filters_and_sorts(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _runs(app, pilot)
        assert table.row_count == 5
        assert _column(table, "technique")[0] == "lora"  # newest first
        assert "IT/ST/TT" in [str(c.label) for c in table.columns.values()]
        screen.query_one("#f-family", Select).value = "inference"
        await settle(app, pilot)
        assert table.row_count == 4
        assert "IT tok/s" in [str(c.label) for c in table.columns.values()]
        screen.query_one("#f-status", Select).value = "oom"
        await settle(app, pilot)
        assert _column(table, "model") == ["qwen2.5-7b"]
        screen.query_one("#f-status", Select).value = None
        screen.query_one("#f-text", Input).value = "t:bf16,fp16"
        await pilot.pause(0.4)  # typing applies the filter after a short pause
        await settle(app, pilot)
        assert sorted(_column(table, "technique")) == ["bf16 (sim)", "fp16 (sim)"]
        await _filter(app, pilot, "memory")  # words search the error text
        assert _column(table, "status") == ["oom"]
        await _filter(app, pilot, "since:nonsense")
        assert "expected a date" in str(screen.query_one("#runs-status", Static).render())
        await _filter(app, pilot, "")
        # Sort by IT: the cursor's column, then reversed on a second press.
        table.focus()
        it_col = list(table.columns).index(next(k for k in table.columns if k.value == "it"))
        table.move_cursor(row=0, column=it_col)
        await pilot.press("s")
        await settle(app, pilot)
        assert _column(table, "it")[:3] == ["176.2", "171.9", "101.5"]
        await pilot.press("s")
        await settle(app, pilot)
        assert _column(table, "it")[0] == "101.5"
        assert "sorted by it ▲" in str(screen.query_one("#runs-status", Static).render())


async def test_mark_open_and_compare(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _runs(app, pilot)
        ids = run_ids()
        table.move_cursor(row=table.get_row_index(ids[2]), column=0)
        await pilot.press("space", "space")
        assert app.marked == {ids[2], ids[1]}
        assert str(table.get_cell(ids[2], "mark")) == "✓"
        assert "2 marked" in str(screen.query_one("#runs-status", Static).render())
        table.move_cursor(row=table.get_row_index("20270115-073000-0030-qwen2.5-7b-fp32"))
        await pilot.press("enter")
        await settle(app, pilot)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        assert "CUDA out of memory" in str(detail.query_one("#detail-error", Static).render())
        await pilot.press("escape")
        table.move_cursor(row=table.get_row_index(ids[0]))
        await pilot.press("enter")
        await settle(app, pilot)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        metrics = detail.query_one("#detail-metrics", DataTable)
        assert {str(metrics.get_row(k)[1]) for k in ("it", "aec_w")} == {"101.5", "412"}
        assert "gpu0 via simulated" in str(detail.query_one("#d-mem", TimeChart).border_subtitle)
        assert "12 steps" in str(detail.query_one("#d-steps", TimeChart).border_subtitle)
        await pilot.press("escape", "c")
        await settle(app, pilot)
        assert app.current_mode == "compare"


async def test_delete_asks_then_deletes(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _runs(app, pilot)
        victim = "20270115-073000-0030-qwen2.5-7b-fp32"
        table.move_cursor(row=table.get_row_index(victim))
        await pilot.press("d")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("n")
        await settle(app, pilot)
        assert table.row_count == 5
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await settle(app, pilot)
        await settle(app, pilot)
        assert table.row_count == 4 and victim not in [k.value for k in table.rows]
        assert victim not in Store(app.db_path).run_ids()


async def test_empty_database_says_how_to_start(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False, mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        screen, table = await _runs(app, pilot)
        assert table.row_count == 0
        assert "efficientllm run -m tiny" in str(screen.query_one("#runs-status", Static).render())


async def test_long_history_loads_page_by_page(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False, mode="runs")
    with Store(app.db_path).connect() as con:
        con.execute(
            "INSERT INTO runs (run_id, family, technique, model, status, started_at) "
            "SELECT 'r' || lpad(i::VARCHAR, 4, '0'), 'inference', 'fp32', 'tiny', 'ok', "
            "TIMESTAMPTZ '2027-01-01 00:00:00+00' + to_minutes(i) FROM range(150) t(i)"
        )
    async with app.run_test(size=(80, 24)) as pilot:
        screen, table = await _runs(app, pilot)
        assert table.row_count == 100 and screen.more
        table.move_cursor(row=95)
        await settle(app, pilot)
        assert table.row_count == 150 and not screen.more
        assert "150 runs" in str(screen.query_one("#runs-status", Static).render())


async def test_a_failed_load_says_so_and_stops_waiting(
    new_app: Callable[..., EfficientLLMApp], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Detail and Compare show a store failure in place of "loading…", and `r` retries."""
    from efficientllm_tui.tui.screens.compare import CompareScreen

    app = new_app(mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        _, table = await _runs(app, pilot)
        table.move_cursor(row=table.get_row_index(run_ids()[0]))
        await pilot.press("space")

        def broken(self, run_id):  # type: ignore[no-untyped-def]
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(Store, "get_run", broken)
        await pilot.press("enter")
        await settle(app, pilot)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen) and not detail.pending
        assert "could not load" in str(detail.query_one("#detail-head", Static).render())
        await pilot.press("escape", "c")
        await settle(app, pilot)
        compare = app.screen
        assert isinstance(compare, CompareScreen) and not compare.pending
        head = compare.query_one("#cmp-head", Static)
        assert "could not load the marked runs" in str(head.render())
        monkeypatch.undo()
        await pilot.press("r")
        await settle(app, pilot)
        assert "1 runs" in str(head.render())


async def test_runs_from_several_hosts_say_where(new_app: Callable[..., EfficientLLMApp]) -> None:
    """One host: the device column as is. Runs from another machine (imported, a Ray node):
    every device cell names its host, and the text filter finds runs by host."""
    app = new_app(mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        _, table = await _runs(app, pilot)
        assert not any("@" in d for d in _column(table, "device"))
    other = run_ids()[0]
    with Store(app.db_path).connect() as con:
        con.execute("UPDATE runs SET host = 'node7' WHERE run_id = ?", [other])
    app = new_app(mode="runs", seed=False)
    async with app.run_test(size=SIZE) as pilot:
        _, table = await _runs(app, pilot)
        ids = [str(r.value) for r in table.rows]
        devices = dict(zip(ids, _column(table, "device"), strict=True))
        assert devices[other].endswith("@node7")
        assert all(d.endswith("@lab") for rid, d in devices.items() if rid in run_ids()[1:])
        await _filter(app, pilot, "node7")
        assert [str(r.value) for r in table.rows] == [other]
