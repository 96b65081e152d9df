"""The live dashboard: devices and graphs from a fake feed, active runs, daemon-missing state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from textual.widgets import DataTable

from efficientllm_tui.live.feed import SyntheticFeed
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.messages import SamplesArrived
from efficientllm_tui.tui.screens.dashboard import DashboardScreen
from efficientllm_tui.tui.widgets.chart import TimeChart
from efficientllm_tui.tui.widgets.devices import DeviceList
from profiling.daemon.client import DaemonError
from profiling.sample import Sample

from .scenes import NOW_NS, T0_NS, make_app, settle

SIZE = (120, 36)


def _text(app: EfficientLLMApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def test_simulated_devices_are_shown_and_marked(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(n_gpus=4)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        devices = app.screen.query_one(DeviceList)
        assert devices.devices == ["gpu0", "gpu1", "gpu2", "gpu3", "cpu"]
        assert "SIMULATED" in _text(app, "#feed-banner")
        assert app.simulated
        assert "SIM" in " ".join(str(line) for line in devices.lines())
        status = _text(app, "#dash-status")
        assert "1 min" in status and "via simulated" in status
        chart = app.screen.query_one("#chart-power", TimeChart)
        assert "W" in str(chart.border_subtitle)
        assert any(ch in chart.text() for ch in "⣀⣤⣶⣿")
        await pilot.press("w")
        await settle(app, pilot)
        assert "5 min" in _text(app, "#dash-status")
        await pilot.press("w")
        await settle(app, pilot)
        assert "all history" in _text(app, "#dash-status")
        devices.focus()
        await pilot.press("down")
        await settle(app, pilot)
        assert "gpu1 via" in _text(app, "#dash-status")
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        await settle(app, pilot)
        assert "cpu via" in _text(app, "#dash-status")
        assert "CPU %" in str(app.screen.query_one("#chart-act", TimeChart).border_title)


async def test_recent_runs_panel_lists_stored_runs(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(active=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, active=1)
        recent = app.screen.query_one("#recent", DataTable)
        col = [str(k.value) for k in recent.columns].index("pair")  # 80 columns: no "when"
        pairs = [str(recent.get_row_at(i)[col]) for i in range(recent.row_count)]
        assert "tiny × fp16" in pairs and "qwen2.5-7b × fp32" in pairs


async def test_active_run_found_in_run_dirs(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(active=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot, active=1)
        table = app.screen.query_one("#active", DataTable)
        assert table.display and table.row_count == 1
        pair, progress, rate, phase, energy, device = (str(c) for c in table.get_row_at(0))
        assert (pair, phase, device) == ("tiny × bf16", "measure", "cuda:0")
        assert "50%" in progress and progress.endswith("1s")  # 7 steps left x 0.18 s
        assert rate == "178 tok/s"  # 32 tokens / 0.18 s
        assert energy.startswith("≈") and energy.endswith("J")


async def test_no_daemon_says_what_to_do(tmp_path: Path) -> None:
    calls: list[int | None] = []

    def missing(since_ns: int | None) -> Iterator[Sample]:
        calls.append(since_ns)
        raise DaemonError(f"no profiling daemon is running for {tmp_path}")

    app, _ = make_app(tmp_path / "home", seed=False)
    app.sample_source = missing
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.pause(0.2)
        app.screen.redraw()  # type: ignore[attr-defined]
        banner = _text(app, "#feed-banner")
        assert "efficientllm daemon start" in banner and "no profiling daemon" in banner
        assert "no daemon" in str(app.screen.query_one("NavBar").render())
        assert calls and isinstance(app.screen, DashboardScreen)
        assert "No run is going" in _text(app, "#active-empty")


async def test_a_burst_keeps_every_sample(new_app: Callable[..., EfficientLLMApp]) -> None:
    feed = SyntheticFeed(n_gpus=8, t0_ns=T0_NS, history_s=5)
    app = new_app(feed=feed, seed=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        before = app.history.received
        burst = [feed.sample(f"gpu{k % 8}", NOW_NS + 10**6 * (k // 8 + 1)) for k in range(10_000)]
        feed.inject(burst)
        for _ in range(200):
            if app.history.received >= before + 10_000:
                break
            await pilot.pause(0.02)
        assert app.history.received == before + 10_000
        assert sum(len(s.fine) for s in app.history.devices.values()) > 10_000 - 100


def test_samples_arrived_merges_instead_of_dropping() -> None:
    a = [Sample(t_ns=1, host="h", device="gpu0", source="simulated")]
    b = [Sample(t_ns=2, host="h", device="gpu0", source="simulated")]
    older, newer = SamplesArrived(a), SamplesArrived(b)
    assert older.can_replace(newer)
    assert [s.t_ns for s in newer.samples] == [1, 2]
    assert not older.can_replace(DaemonErrorMessage())


class DaemonErrorMessage(SamplesArrived.__mro__[1]):  # type: ignore[misc]
    """Any other message."""
