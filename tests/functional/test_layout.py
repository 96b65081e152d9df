"""Screens read right at 80x24 and 120x36: the dashboard lays out by what the devices report,
tables show whole columns, the footer keeps Quit, Launch freezes its technique column,
selects within a model family, marks pairs that cannot fit and says how to start."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import DataTable, Input, Select, Static

from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.launch import LaunchScreen, model_family
from efficientllm_tui.tui.widgets.chart import AREA_KEY, LINE_KEY, TimeChart
from efficientllm_tui.tui.widgets.fit import FitTable, cell_width, fit

from .scenes import make_app, run_ids, settle
from .scenes_live import CpuBoxFeed, drive_live_scene, live_scene_app


def _screen_lines(app: EfficientLLMApp) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips()]


def _assert_whole(table: FitTable) -> None:
    """Every shown column fits the table: nothing is cut at the right edge."""
    widths = sum(c.get_render_width(table) for c in table.columns.values())
    assert widths <= table.content_size.width, (widths, table.content_size.width)


def test_fit_keeps_whole_columns_most_telling_first() -> None:
    # widths 10, 20, 5, 8 with 2 cells of padding each; 30 cells of room
    assert fit([10, 20, 5, 8], [1, 0, 2, 3], 30) == [False, True, True, False]
    assert fit([10, 20, 5, 8], [0, 2, 3, 1], 30) == [True, False, True, True]
    assert fit([10, 20], [0], 100) == [True, False]  # left out of the order: never shown
    assert cell_width("[red]oom[/]") == 3 and cell_width(Text("ST 1.9e-08")) == 10


async def test_cpu_box_dashboard_charts_memory_and_cpu_at_full_height(tmp_path: Path) -> None:
    app, feed = live_scene_app(tmp_path / "home", "dashboard-cpu")
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_live_scene(app, pilot, "dashboard-cpu")
            screen = app.screen
            assert not screen.query_one("#chart-power").display
            assert not screen.query_one("#chart-clock").display
            mem = screen.query_one("#chart-mem", TimeChart)
            act = screen.query_one("#chart-act", TimeChart)
            # 24 rows: bar, status, devices (3), charts, runs (7), footer: charts get 11
            assert mem.outer_size.height == act.outer_size.height == 11
            # scaled to the runner's RSS (peak 1.4 GiB -> 2), the host's total stated
            assert mem._y_max == 2.0
            assert mem.border_subtitle == "runner 1.4 · host 9.6/24.0 GiB"
            assert str(mem.border_title) == "runner memory GiB"
            # host and runner told apart by shape and label, not only colour
            runner, host = act._series
            assert (runner.label, runner.area, host.label, host.area) == (
                "runner", True, "host", False
            )
            title = Text.from_markup(str(act.border_title)).plain
            assert title == f"CPU % of all cores {AREA_KEY} runner {LINE_KEY} host"
            # runner: (60 + 20 sin(90 / 5)) % over 2 cores at the last sample = 22 %
            assert act.border_subtitle == "host 64.3% · runner 22% · psutil"
    finally:
        feed.stop()


async def test_gpu_dashboard_at_80x24_keeps_two_charts_and_at_120x36_four(
    tmp_path: Path,
) -> None:
    for size, shown in (((80, 24), False), ((120, 36), True)):
        app, feed = make_app(tmp_path / f"home{size[0]}", mode="dashboard")  # two GPUs
        try:
            async with app.run_test(size=size) as pilot:
                await settle(app, pilot)
                screen = app.screen
                assert screen.query_one("#chart-power").display is shown
                assert screen.query_one("#chart-clock").display is shown
                rows = screen.query_one("#chart-mem", TimeChart).outer_size.height
                assert rows == (8 if size == (80, 24) else 7)  # one row of two; a 2x2 grid
        finally:
            feed.stop()


async def test_dashboard_tables_show_whole_columns(tmp_path: Path) -> None:
    app, feed = live_scene_app(tmp_path / "home", "dashboard-cpu")
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await drive_live_scene(app, pilot, "dashboard-cpu")
            active = app.screen.query_one("#active", FitTable)
            recent = app.screen.query_one("#recent", FitTable)
            assert active.shown == ["pair", "progress", "rate", "phase", "energy", "device"]
            assert recent.shown == ["when", "pair", "result"]
            lora = "20270115-074000-0040-qwen2.5-1.5b-lora"
            assert recent.get_row(lora)[2] == "ST 1.9e-08"
            _assert_whole(active)
            _assert_whole(recent)
            await pilot.resize_terminal(80, 24)
            await settle(app, pilot, active=1)
            assert active.shown == ["pair", "progress"]  # rate and the rest do not fit whole
            assert recent.shown == ["pair", "result"]
            _assert_whole(active)
            _assert_whole(recent)
    finally:
        feed.stop()


async def test_runs_at_80_columns_keep_headline_metrics_and_show_the_run_id(
    tmp_path: Path,
) -> None:
    app, feed = live_scene_app(tmp_path / "home", "runs-cursor")
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_live_scene(app, pilot, "runs-cursor")
            table = app.screen.query_one("#runs", FitTable)
            assert table.shown == [
                "mark", "model", "technique", "status", "thrpt", "al_s", "amu", "pcu", "aec_w"
            ]
            _assert_whole(table)
            status = str(app.screen.query_one("#runs-status", Static).render())
            # the cursor is on the third run (newest first): its whole id, whatever the width
            assert status.endswith(f"\n{run_ids()[2]} · enter opens it")
            await pilot.resize_terminal(120, 36)
            await settle(app, pilot)
            assert "started_at" in table.shown and "device" in table.shown
            _assert_whole(table)
    finally:
        feed.stop()


async def test_footer_keeps_quit_and_a_space_after_the_screens_group(tmp_path: Path) -> None:
    app, feed = live_scene_app(tmp_path / "home", "runs-cursor")
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(app, pilot)
            footer = _screen_lines(app)[-1]
            assert footer.startswith("q Quit space Mark s Sort")
            assert "1 2 3 4 5" in footer and "screens " in footer and "screensq" not in footer
            await pilot.resize_terminal(60, 24)
            await settle(app, pilot)
            await pilot.pause(0.1)
            footer = _screen_lines(app)[-1]
            # whole keys only: the ones that do not fit are left out, Quit is first
            assert footer.startswith("q Quit space Mark s Sort c Compare")
            assert "/ Filter" not in footer and "/ Fil" not in footer
            assert footer.rstrip().endswith("^p palette")
    finally:
        feed.stop()


async def _launch(tmp_path: Path, size: tuple[int, int]) -> tuple[EfficientLLMApp, CpuBoxFeed]:
    app, feed = live_scene_app(tmp_path / "home", "launch-form")
    assert isinstance(feed, CpuBoxFeed)
    return app, feed


async def test_launch_freezes_the_technique_column_and_marks_pairs_too_big(
    tmp_path: Path,
) -> None:
    app, feed = await _launch(tmp_path, (80, 24))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_live_scene(app, pilot, "launch-cpu-right")
            screen = app.screen
            assert isinstance(screen, LaunchScreen)
            matrix = screen.query_one("#matrix", DataTable)
            assert matrix.fixed_columns == 2 and matrix.scroll_x > 0
            lines = _screen_lines(app)
            assert "technique" in lines[2] and "llama-3.1-8b" in lines[2]
            assert lines[3].split()[1:3] == ["infer/bit-width", "fp32"]
            # 24 GiB of host RAM: 7-8B models in fp32 need > 0.9 x 24 GiB of weights
            assert screen.memory == ("cpu", 24 * 2**30)
            assert str(matrix.get_cell("fp32", "llama-3.1-8b")) == "⊘"
            assert str(matrix.get_cell("bf16", "llama-3.1-8b")) == "·"
            assert str(matrix.get_cell("fp32", "qwen2.5-3b")) == "·"
            info = str(screen.query_one("#pair-info", Static).render())
            assert info.endswith(
                "fp32 × llama-3.1-8b: cannot run: needs at least 29.9 GiB of fp32 weights; "
                "cpu has 24.0 GiB"
            )
            await pilot.press("space")
            assert list(screen.selected) == []
    finally:
        feed.stop()


async def test_space_on_the_technique_column_selects_within_one_family(
    tmp_path: Path,
) -> None:
    app, feed = await _launch(tmp_path, (120, 36))
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await drive_live_scene(app, pilot, "launch-family")
            screen = app.screen
            assert isinstance(screen, LaunchScreen)
            assert screen.family == "qwen2.5"
            # qwen2.5-7b and -14b cannot fit 24 GiB in fp32: skipped
            assert list(screen.selected) == [
                ("fp32", "qwen2.5-0.5b"), ("fp32", "qwen2.5-1.5b"), ("fp32", "qwen2.5-3b")
            ]
            info = str(screen.query_one("#pair-info", Static).render())
            assert "space selects fp32 on the qwen2.5 family: 3 model(s), 2 skipped" in info
            await pilot.press("right_square_bracket", "space")
            assert screen.family == "llama-3.2"
            assert list(screen.selected)[3:] == [("fp32", "llama-3.2-1b"), ("fp32", "llama-3.2-3b")]
    finally:
        feed.stop()


def test_model_family_is_the_id_without_its_size() -> None:
    ids = ["tiny", "qwen2.5-1.5b", "llama-3.2-1b", "llama-3.1-8b", "phi-3.5-mini",
           "smollm2-135m", "mistral-7b"]
    assert [model_family({"id": i}) for i in ids] == [
        "tiny", "qwen2.5", "llama-3.2", "llama-3.1", "phi-3.5", "smollm2", "mistral"
    ]
    assert model_family({"id": "x-7b", "family": "x"}) == "x"


async def test_form_field_footer_says_how_to_start_and_the_dropdown_has_a_background(
    tmp_path: Path,
) -> None:
    app, feed = await _launch(tmp_path, (80, 24))
    started: list[str] = []
    app.enqueue_runs = lambda specs: started.extend(s.run_id for s in specs)  # type: ignore[method-assign]
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await drive_live_scene(app, pilot, "launch-form")
            screen = app.screen
            params = screen.query_one("#params", Input)
            assert params.has_focus and params.value == "calibration_tokens=64"  # `s` typed into it
            assert _screen_lines(app)[-1].startswith(
                "^s Queue (s types in a field) esc Back to matrix"
            )
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert started and list(screen.selected) == []
            await pilot.press("escape")
            assert screen.query_one("#matrix").has_focus
            await pilot.press("f", "enter")
            await pilot.pause()
            overlay = screen.query_one("#device", Select).query_one("SelectOverlay")
            assert overlay.display and overlay.styles.background.a == 1.0
    finally:
        feed.stop()


async def test_a_key_burst_with_backspace_keeps_every_character(tmp_path: Path) -> None:
    app, feed = await _launch(tmp_path, (80, 24))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            screen = app.screen
            await pilot.press("f", *["tab"] * 4)  # seq len
            seq = screen.query_one("#seq_len", Input)
            assert seq.has_focus
            await pilot.press("end", "backspace", "backspace", "1", "2", "8", "backspace", "9")
            await pilot.press(*["tab"] * 3)  # params
            await pilot.press(*"lora_r=16", "backspace", "backspace", *"32 seed=7")
            await pilot.press("backspace", *"8")
            await pilot.pause()
            assert seq.value == "129"
            assert screen.query_one("#params", Input).value == "lora_r=32 seed=8"
    finally:
        feed.stop()
