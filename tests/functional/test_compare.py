"""Compare: raw metrics, the paper's scores and ranks, ours beside the paper's, charts."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Static, TabbedContent

from efficientllm_tui.paper import paper_rank
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.widgets.bars import BarChart
from efficientllm_tui.tui.widgets.scatter import ScatterPlot

from .scenes import run_ids, settle


async def test_scores_ranks_and_paper_ranks(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="compare")
    fp32, bf16, fp16 = run_ids()
    app.marked.update({fp32, bf16, fp16})
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        raw = screen.query_one("#cmp-raw", DataTable)
        assert [str(c) for c in raw.get_row("it")[1:4]] == ["101.5", "176.2", "171.9"]
        ranks = screen.query_one("#cmp-rank", DataTable)
        it_row = [str(c) for c in ranks.get_row("it")]
        assert it_row[0].startswith("IT tok/s ↑")
        assert it_row[1] == "0.10 #3"  # the paper ranks no fp32
        assert it_row[2].startswith("1.00 #1") and "paper #2 (≈1.5B-3.8B)" in it_row[2]
        assert it_row[3].startswith("0.95 #2") and "paper #3" in it_row[3]
        aec = [str(c) for c in ranks.get_row("aec_w")]
        assert aec[2].startswith("1.00 #1") and aec[1].startswith("0.10 #3")
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
        assert "AMU (up) vs AL s (right)" in str(plot.border_title)


async def test_nothing_marked_says_how(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await settle(app, pilot)
        assert "press space" in str(app.screen.query_one("#cmp-head", Static).render())
        assert not app.screen.query_one(TabbedContent).display
