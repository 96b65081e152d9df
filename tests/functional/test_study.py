"""Study: the studies with their run counts, one study's report tables (the same as
`efficientllm report` writes), refreshed as its runs land."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.widgets import DataTable, Static

from efficientllm_tui.report import table as report_table
from efficientllm_tui.report.build import build_report
from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens import study
from tests.unit.report_rows import OTHER, STUDY, _bundle

from .scene_runs import add_study_runs
from .scenes import settle


def _rows(table: DataTable) -> list[tuple[str, ...]]:
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def _head(app: EfficientLLMApp) -> str:
    return str(app.screen.query_one("#study-head", Static).render())


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study, "POLL_S", 0.2)


async def test_studies_listed_then_one_shown_as_the_report(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="study")
    add_study_runs(app.db_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        listed = _rows(app.screen.query_one("#study-list", DataTable))
        # 6 pretraining + 4 inference + 1 simulated ok runs and one OOM; the other sweep's one.
        assert [r[:5] for r in listed] == [(STUDY, "12", "11", "1", "0"),
                                          (OTHER, "1", "1", "0", "0")]
        assert listed[0][5:] == ("01-15 08:00", "01-15 09:02")
        await pilot.press("enter")
        await settle(app, pilot)
        report = build_report(Store(app.db_path), study=STUDY)
        summary = app.screen.query_one("#study-workloads", DataTable)
        assert _rows(summary) == list(report_table.summary_table(report).rows)
        assert [r[0] for r in _rows(summary)] == ["W1", "W2", "W3"]
        assert "11 ok runs in 3 workloads · 1 left out (not ok)" in _head(app)
        await pilot.press("down", "down")  # W3: pretraining / attention
        await settle(app, pilot)
        wl = report.sections[-1].workloads[0]
        assert wl.family == "pretraining"
        for part, expected in (("raw", report_table.raw_table(wl)),
                               ("rank", report_table.rank_table(wl)),
                               ("tau", report_table.tau_table(wl))):
            shown = app.screen.query_one(f"#study-{part}", DataTable)
            assert _rows(shown) == list(expected.rows), part
        caption = str(app.screen.query_one("#study-rank-caption", Static).render())
        assert caption == "W3 score in [0.1, 1] · our rank · the paper's rank (ranked within " \
                          "W3 only)"
        await pilot.press("s")
        await settle(app, pilot)
        assert app.screen.query_one("#study-switch").current == "study-pick"


async def test_the_tables_follow_runs_as_they_land(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="study", seed=False)
    store = Store(app.db_path)
    # First only a failed run: no table yet, and the screen says they come as runs land.
    store.ingest(_bundle("n-fp32-0", "inference", "bit_width", "tiny", "fp32", 0, {},
                         weights="random", status="oom", sweep_id="s-live"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot)
        assert "none of the 1 selected run(s) finished ok" in _head(app)
        assert "the tables appear as its runs land" in _head(app)
        assert not app.screen.query_one("#study-view").display
        for i, (tech, it) in enumerate((("bf16", 100.0), ("fp16", 120.0))):
            store.ingest(_bundle(f"n-{tech}-0", "inference", "bit_width", "tiny", tech, 0,
                                 {"it": it, "al_s": 0.1 * (i + 1)}, weights="random",
                                 sweep_id="s-live"))
            await pilot.pause(0.6)  # a few polls
            await settle(app, pilot)
            summary = app.screen.query_one("#study-workloads", DataTable)
            assert app.screen.query_one("#study-view").display
            assert _rows(summary)[0][3] == str(i + 1)  # rows in W1
            raw = _rows(app.screen.query_one("#study-raw", DataTable))
            assert [r[0] for r in raw] == ["bf16", "fp16"][: i + 1]
        assert "2 ok runs in 1 workloads · 1 left out (not ok)" in _head(app)
        # a run the dispatcher stored as started is running, not left out for a fault
        store.ingest(_bundle("n-int8-0", "inference", "bit_width", "tiny", "int8", 0, {},
                             weights="random", status="running", sweep_id="s-live"))
        await pilot.pause(0.6)
        await settle(app, pilot)
        assert "2 ok runs in 1 workloads · 1 left out (not ok) · 1 running" in _head(app)
        rank = _rows(app.screen.query_one("#study-rank", DataTable))
        # AL then IT: bf16 is faster per step (AL 0.1 s), fp16 generates more (IT 120).
        assert rank == [("bf16", "1.000 · 1 · 2*", "0.100 · 2 · 2*"),
                        ("fp16", "0.100 · 2 · 1*", "1.000 · 1 · 3*")]


async def test_no_study_says_how_to_make_one(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(mode="study")  # seeded runs, none queued by a study
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert _head(app).startswith("No study yet: `efficientllm study ci-tiny`")
        assert app.screen.query_one("#study-list", DataTable).row_count == 0

