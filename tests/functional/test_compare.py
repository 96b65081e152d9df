"""Compare: runs labelled by short id and start time, ranks grouped by workload exactly as
the report ranks them, trade-off axes that have data, overlaid loss curves."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Static, TabbedContent

from efficientllm_tui.paper import paper_rank
from efficientllm_tui.report.build import build_report
from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.compare import short_id
from efficientllm_tui.tui.widgets.bars import BarChart
from efficientllm_tui.tui.widgets.chart import TimeChart
from efficientllm_tui.tui.widgets.scatter import ScatterPlot

from .scene_runs import LORA_RUN, STEPS, TRAINING, add_training_runs, loss_at
from .scenes import run_ids, settle


def _row(table: DataTable, key: str) -> list[str]:
    return [str(c) for c in table.get_row(key)]


async def test_scores_ranks_and_paper_ranks(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="compare")
    fp32, bf16, fp16 = run_ids()
    app.marked.update({fp32, bf16, fp16})
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        raw = screen.query_one("#cmp-raw", DataTable)
        assert [str(c) for c in raw.get_row("it")[1:4]] == ["101.5", "176.2", "171.9"]
        # Runs are told apart by short id and start time, not by pair alone.
        labels = [str(c.label) for c in raw.columns.values()][1:4]
        assert labels == ["A fp32·tiny\n  000a 01-15 07:00", "B bf16·tiny\n  001a 01-15 07:10",
                          "C fp16·tiny\n  002a 01-15 07:20"]
        assert _row(raw, "workload")[1:4] == ["W1", "W1", "W1"]
        ranks = screen.query_one("#cmp-rank", DataTable)
        assert [str(c.label) for c in ranks.columns.values()] == [
            "wl", "runs", "technique", "AMU ↓", "PCU ↑", "AL s ↓", "IT tok/s ↑", "AEC W ↓"]
        it = ranks.get_column("it")
        assert [str(c) for c in it] == ["1.00 #1 p≈2", "0.95 #2 p≈3", "0.10 #3"]  # bf16 fp16 fp32
        assert _row(ranks, "W1:fp32")[:3] == ["W1", "A", "fp32"]
        assert [str(c) for c in ranks.get_column("aec_w")] == [
            "1.00 #1 p≈2", "0.82 #2 p≈3", "0.10 #3"]
        assert paper_rank("inference", "bit_width", "fp32", "tiny", "it") is None  # no fp32
        assert "SIMULATED" in str(screen.query_one("#cmp-head", Static).render())
        await pilot.press("b")
        await pilot.pause()
        assert screen.query_one(TabbedContent).active == "cmp-bars"
        titles = [str(b.border_title) for b in screen.query(BarChart)]
        assert "IT tok/s (higher is better)" in titles and "AL s (lower is better)" in titles
        await pilot.press("p")
        await pilot.pause()
        plot = screen.query_one(ScatterPlot)
        assert "AEC W (up) vs IT tok/s (right)" in str(plot.border_title)
        rendered = str(plot.render())
        assert all(m in rendered for m in "ABC")
        await pilot.press("a")
        await pilot.pause()
        assert "AL s (up) vs IT tok/s (right)" in str(plot.border_title)


async def test_ranks_are_grouped_by_workload_as_the_report(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    """Inference on tiny, pretraining on tiny and fine-tuning on qwen2.5-1.5b: three
    workloads, each with its own #1, every cell the report's score and rank."""
    app = new_app(mode="compare")
    training = add_training_runs(app.db_path)
    marked = [*run_ids(), *training, LORA_RUN]
    app.marked.update(marked)
    report = build_report(Store(app.db_path), run_ids=marked)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        ranks = app.screen.query_one("#cmp-rank", DataTable)
        workloads = [wl for sec in report.sections for wl in sec.workloads]
        assert [(wl.family, wl.model) for wl in workloads] == [
            ("inference", "tiny"), ("finetuning", "qwen2.5-1.5b"), ("pretraining", "tiny")]
        shown = 0
        for wl in workloads:
            for row in wl.rows:
                cells = _row(ranks, f"{wl.tag}:{row.label}")
                shown += 1
                for m, rank in row.ranks.items():
                    cell = cells[3 + [str(k.value) for k in ranks.columns][3:].index(m)]
                    assert cell.startswith(f"{row.scores[m]:.2f} #{rank}"), (wl.tag, m, cell)
            for m in {m for row in wl.rows for m in row.ranks}:
                assert min(row.ranks[m] for row in wl.rows if m in row.ranks) == 1
        assert shown == ranks.row_count == 3 + 1 + 3
        # The lone fine-tuning run is #1 of its own workload, never ranked against tiny.
        assert _row(ranks, "W2:lora")[:3] == ["W2", "A", "lora"]
        notes = str(app.screen.query_one("#cmp-rank-notes", Static).render())
        assert "W2 finetuning / PEFT · qwen2.5-1.5b" in notes
        assert "W3 pretraining / attention · tiny" in notes


async def test_cpu_runs_plot_axes_with_data_and_overlay_loss(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="compare")
    training = add_training_runs(app.db_path)  # CPU: AEC is NULL
    app.marked.update([*training, LORA_RUN])
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        await pilot.press("p")
        await pilot.pause()
        plot = screen.query_one(ScatterPlot)
        assert str(plot.border_title) == "trade-off: AL s (up) vs TT tok/param/s (right)"
        legend = str(screen.query_one("#cmp-legend", Static).render())
        assert "AEC" not in legend  # no pair without data is offered
        await pilot.press("l")
        await pilot.pause()
        assert screen.query_one(TabbedContent).active == "cmp-loss"
        chart = screen.query_one("#cmp-loss-chart", TimeChart)
        assert [s.label for s in chart._series] == ["A", "B", "C", "D"]  # lora first (07:40)
        assert len(chart._series[0].points) == 24
        for series, (_, _, _, _, offset, rate) in zip(chart._series[1:], TRAINING, strict=True):
            assert series.points == [(float(k), loss_at(k, offset, rate)) for k in range(STEPS)]
        assert (chart._x0, chart._x1) == (0.0, float(STEPS - 1))
        text = chart.text()
        assert text.count("⠀") < len(text)  # something is drawn
        lines = str(screen.query_one("#cmp-loss-legend", Static).render()).splitlines()
        assert lines[0] == "■ A lora·qwen2.5-1.5b 0040 01-15 07:40  24 steps · loss 3.2 → 1.13"
        assert lines[1].startswith(f"■ B mqa·tiny {short_id(TRAINING[0][0])} 01-15 07:50  "
                                   "40 steps")


async def test_no_training_run_says_where_loss_curves_come_from(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="compare")
    app.marked.update(run_ids())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("l")
        await pilot.pause()
        legend = str(app.screen.query_one("#cmp-loss-legend", Static).render())
        assert legend.startswith("No marked run has a loss per step")


async def test_nothing_marked_says_how(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await settle(app, pilot)
        assert "press space" in str(app.screen.query_one("#cmp-head", Static).render())
        assert not app.screen.query_one(TabbedContent).display


def test_short_id() -> None:
    assert short_id("20270115-070000-000a-tiny-fp32") == "000a"
    assert short_id("p-gqa-0") == "p-gqa-0"
    assert short_id("imported-run-0123456789") == "23456789"
