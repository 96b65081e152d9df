"""The live dashboard: device graphs, active and queued runs, and the latest stored runs."""

from __future__ import annotations

import os
import time
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, Static

from efficientllm_tui.display import (
    ago,
    duration,
    gib,
    joules,
    num,
    status_style,
)
from efficientllm_tui.live.history import energy_integral_j, source_label
from efficientllm_tui.runs.queue import QueueRow
from efficientllm_tui.runs.tracker import ActiveRun
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.bars import bar_line
from efficientllm_tui.tui.widgets.chart import Series, TimeChart, nice_max
from efficientllm_tui.tui.widgets.devices import DeviceList
from efficientllm_tui.tui.widgets.fit import FitTable
from efficientllm_tui.tui.widgets.sample_text import act_summary, clock_summary, mem_summary
from efficientllm_tui.tui.widgets.status_line import StatusLine
from profiling import metric_catalog

WINDOWS: tuple[tuple[str, float | None], ...] = (
    ("1 min", 60.0),
    ("5 min", 300.0),
    ("whole run", None),
)
REDRAW_S = 0.09
"""Shortest time between redraws: new samples are drawn as they come, at most ~11 times a
second (a slower screen skips frames; the samples wait in the rings), else once a second."""
_MIN_POINTS = 60
_ACTIVE_COLUMNS = (
    ("pair", "model × technique"),
    ("progress", "progress · ETA"),
    ("rate", "rate · loss"),
    ("phase", "phase"),
    ("energy", "energy"),
    ("device", "device"),
)
_ACTIVE_PRIORITY = ("pair", "progress", "rate", "energy", "device", "phase")
"""Most telling first: a narrow table drops whole columns from the end of this list."""
_RECENT_COLUMNS = (("when", "when"), ("pair", "model × technique"), ("result", "result"))
_RECENT_PRIORITY = ("pair", "result", "when")


class DashboardScreen(AppScreen):
    """Live view of every device and every run going now."""

    NAME = "dashboard"
    BINDINGS = [
        Binding("w", "cycle_window", "Window"),
        Binding("left_square_bracket", "device(-1)", "Prev dev", show=False),
        Binding("right_square_bracket", "device(1)", "Next dev", show=False),
        Binding("x", "stop_run", "Stop run"),
    ]

    window_index: reactive[int] = reactive(0)

    def __init__(self) -> None:
        super().__init__()
        self._drawn_version = -1
        self._drawn_at = 0.0
        self._pending: Any = None
        self._device: str | None = None
        self._ncpu = os.cpu_count() or 1

    def compose_body(self) -> ComposeResult:
        yield Static(id="feed-banner")
        yield StatusLine(id="dash-status")
        yield DeviceList(self.elapp.history, id="devices")
        with Grid(id="charts"):
            yield TimeChart("memory GiB", id="chart-mem")
            yield TimeChart("activity %", id="chart-act", y_max=100.0)
            yield TimeChart("power W", id="chart-power")
            yield TimeChart("clock % of peak · temp °C", id="chart-clock", y_max=100.0)
        with Horizontal(id="dash-runs"):
            with Vertical(id="active-box"):
                yield Static(id="active-empty")
                yield FitTable(id="active", cursor_type="row", zebra_stripes=True)
            yield FitTable(id="recent", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#active", FitTable).border_title = "active runs"
        self.query_one("#recent", FitTable).border_title = "recent runs"
        self.query_one("#active-empty", Static).border_title = "active runs"
        self.set_interval(1.0, self.redraw_if_needed)
        self.redraw()
        if self.elapp.recent is not None:
            self.recent_changed(self.elapp.recent)

    # ------------------------------------------------------------------ actions

    def action_cycle_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(WINDOWS)

    def watch_window_index(self) -> None:
        if self.is_mounted:
            self.redraw()

    def action_device(self, delta: int) -> None:
        self.query_one(DeviceList).action_move(delta)

    @on(DeviceList.Selected)
    def _device_selected(self, message: DeviceList.Selected) -> None:
        self._device = message.device
        self.redraw()

    def action_stop_run(self) -> None:
        """Stop the selected run (SIGTERM), or take a queued one out of the queue."""
        table = self.query_one("#active", DataTable)
        if not table.display or not table.row_count:
            self.notify("no active or queued run to stop", severity="warning")
            return
        run_id = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        from efficientllm_tui.tui.screens.confirm import ConfirmScreen

        def done(ok: bool | None) -> None:
            if not ok:
                return
            stopped, what = self.elapp.cancel_run(run_id)
            if stopped:
                self.notify(f"{run_id}: {what}", title="Stop")
            else:
                self.notify(f"{run_id}: {what} (it has ended)", severity="warning")
            self.redraw()

        if run_id in self.elapp.active:
            title = "Stop run?"
            message = f"Send SIGTERM to {run_id}? It stops at once and is stored as cancelled."
            yes = "Stop"
        else:
            title = "Remove from the queue?"
            message = f"Take {run_id} out of the queue? It never starts and is stored as cancelled."
            yes = "Remove"
        self.app.push_screen(ConfirmScreen(title, message, yes=yes), done)

    def queue_changed(self) -> None:
        """The app read a changed queue from disk: redraw the runs table."""
        if self.is_current:
            self._draw_active()

    # ------------------------------------------------------------------ drawing

    def samples_arrived(self) -> None:
        """New samples are in the rings: draw now, or as soon as the throttle allows."""
        if not self.is_current or self._pending is not None:
            return
        wait = REDRAW_S - (time.monotonic() - self._drawn_at)
        if wait <= 0:
            self.redraw()
        else:
            self._pending = self.set_timer(wait, self._draw_pending)

    def _draw_pending(self) -> None:
        self._pending = None
        if self.is_current and self.elapp.history.version != self._drawn_version:
            self.redraw()

    def redraw_if_needed(self) -> None:
        """Once a second: windows slide and ETAs change even when no sample comes."""
        if self.is_current and time.monotonic() - self._drawn_at >= 1.0:
            self.redraw()

    def redraw(self) -> None:
        app = self.elapp
        self._drawn_version = app.history.version
        self._drawn_at = time.monotonic()
        app.redraws += 1
        devices = self.query_one(DeviceList)
        devices.update_devices()
        if self._device not in app.history.devices:
            self._device = devices.selected
        self._draw_banner()
        self._draw_charts()
        self._draw_active()

    def _window(self, device: str | None) -> tuple[int, int, str]:
        t_end = self.elapp.now_ns()
        label, seconds = WINDOWS[self.window_index]
        if seconds is not None:
            return t_end - int(seconds * 1e9), t_end, label
        starts = [
            r.started_ns
            for r in self.elapp.active.values()
            if r.started_ns and (r.sample_device == device or r.sample_device is None)
        ]
        if starts:
            return min(starts), t_end, f"whole run ({duration((t_end - min(starts)) / 1e9)})"
        series = self.elapp.history.devices.get(device or "")
        first = series.coarse[0].t_ns if series and series.coarse else t_end - 60_000_000_000
        return first, t_end, "all history (no run going)"

    def _draw_banner(self) -> None:
        app = self.elapp
        banner = self.query_one("#feed-banner", Static)
        parts = []
        if not app.feed_state.connected and app.feed_state.detail:
            parts.append(
                f"No live samples: {app.feed_state.detail}. Start the profiling "
                "daemon: `efficientllm daemon start` (a launch starts it too). "
                "Retrying every few seconds."
            )
        if app.simulated:
            parts.append("SIMULATED DATA: samples from the simulated GPU backend, not hardware")
        _update(banner, "\n".join(parts))
        banner.set_class(bool(parts), "-shown")
        banner.set_class(app.simulated and app.feed_state.connected, "-simulated")
        status = self.query_one("#dash-status", StatusLine)
        t0, t1, label = self._window(self._device)
        host = app.history.latest("cpu")
        text = f"window [b]{label}[/b] (w)"
        if self._device:
            text += f" · {self._device} via [b]{source_label(app.history.latest(self._device))}[/b]"
        if host is not None:
            text += (
                f" · host CPU {num(host.util_pct, 3)}% RAM {gib(host.mem_used_bytes)}/"
                f"{gib(host.mem_total_bytes)} GiB"
            )
        status.set_text(text)

    def _draw_charts(self) -> None:
        device = self._device
        t0, t1, _ = self._window(device)
        samples = self.elapp.history.window(device, t0, t1) if device else []
        # About one sample per braille dot column: more would be drawn over each other.
        limit = max(_MIN_POINTS, 2 * self.query_one("#chart-mem", TimeChart).content_size.width)
        if len(samples) > limit:
            step = -(-len(samples) // limit)
            samples = samples[len(samples) - 1 - (len(samples) - 1) // step * step :: step]
        x0 = (t0 - t1) / 1e9
        latest = samples[-1] if samples else None
        theme = self.app.current_theme
        c1, c2, c3 = theme.primary, theme.warning or "yellow", theme.success or "green"

        def pts(attr: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
            out = []
            for s in samples:
                v = getattr(s, attr)
                out.append(((s.t_ns - t1) / 1e9, None if v is None else v * scale))
            return out

        gib_scale = 1 / 2**30
        mem = self.query_one("#chart-mem", TimeChart)
        total = latest.mem_total_bytes if latest else None
        peak_rss = max((s.rss_bytes for s in samples if s.rss_bytes is not None), default=None)
        if device == "cpu" and peak_rss:
            # The runner's memory, scaled to its own peak: on the host's scale a 1 GiB
            # runner is a flat line. The host's use and total are stated beside it.
            mem.plot(
                [Series("runner RSS", pts("rss_bytes", gib_scale), c1, area=True)],
                x0,
                0.0,
                y_max=nice_max(peak_rss * gib_scale),
                summary=mem_summary(latest),
                title="runner memory GiB",
            )
        else:
            mem.plot(
                [Series("used", pts("mem_used_bytes", gib_scale), c1, area=True)],
                x0,
                0.0,
                y_max=total * gib_scale if total else None,
                summary=mem_summary(latest),
                title="memory GiB" if device != "cpu" else "host memory GiB",
            )
        act = self.query_one("#chart-act", TimeChart)
        if device == "cpu":
            # Told apart by shape as well as colour: the runner is a filled area (its share
            # of all cores), the host a line over it (the runner is part of the host).
            act.plot(
                [
                    Series("runner", pts("cpu_pct", 1 / self._ncpu), c2, area=True),
                    Series("host", pts("util_pct"), c1),
                ],
                x0,
                0.0,
                summary=act_summary(latest, self._ncpu),
                title="CPU % of all cores",
            )
        else:
            series = [
                Series("SM", pts("sm_active_pct"), c1),
                Series("tensor", pts("tensor_active_pct"), c2),
            ]
            if latest is not None and latest.sm_active_pct is None:
                series = [Series("util", pts("util_pct"), c1)]
            act.plot(series, x0, 0.0, summary=act_summary(latest, self._ncpu), title="activity %")
        power = self.query_one("#chart-power", TimeChart)
        peak_w = max((s.power_w for s in samples if s.power_w is not None), default=None)
        has_clock = any(s.sm_clock_mhz is not None or s.temp_c is not None for s in samples)
        self._lay_out_charts(power=peak_w is not None, clock=has_clock)
        power.plot(
            [Series("W", pts("power_w"), c2, area=True)],
            x0,
            0.0,
            y_max=nice_max(peak_w) if peak_w else None,
            summary=f"{latest.power_w:.0f} W"
            if latest and latest.power_w is not None
            else "no power reading",
        )
        clock = self.query_one("#chart-clock", TimeChart)
        peak_mhz = max((s.sm_clock_mhz for s in samples if s.sm_clock_mhz), default=None)
        clock.plot(
            [
                Series("clock", pts("sm_clock_mhz", 100 / peak_mhz) if peak_mhz else [], c1),
                Series("temp", pts("temp_c"), c3),
            ],
            x0,
            0.0,
            summary=clock_summary(latest),
        )

    def _lay_out_charts(self, *, power: bool, clock: bool) -> None:
        """Show the charts the device reports, in as few rows as read well.

        Memory and activity always; power and clock only with readings (a CPU box has
        neither: its two charts get the whole height). On a short, narrow terminal only
        memory and activity are drawn: the device line above states power, clock and
        temperature.
        """
        short, narrow = self.has_class("-short"), self.has_class("-narrow")
        room = not (short and narrow)
        shown = {"power": power and room, "clock": clock and room}
        n = 2 + sum(shown.values())
        columns, rows = {2: (2, 1), 3: (3, 1), 4: (4, 1) if short else (2, 2)}[n]
        charts = self.query_one("#charts", Grid)
        if (charts.styles.grid_size_columns, charts.styles.grid_size_rows) != (columns, rows):
            charts.styles.grid_size_columns = columns
            charts.styles.grid_size_rows = rows
        for name, visible in shown.items():
            chart = self.query_one(f"#chart-{name}", TimeChart)
            if chart.display != visible:
                chart.display = visible

    def _draw_active(self) -> None:
        """Runs going now, then the runs waiting in the queue on disk (in start order)."""
        app = self.elapp
        rows: dict[str, tuple[str, ...]] = {
            run.run_id: self._active_cells(run) for run in app.active.values()
        }
        going = len(rows)
        for queued in app.queued:
            if queued.state == "waiting" and queued.run_id not in rows:
                rows[queued.run_id] = _waiting_cells(queued)
        table = self.query_one("#active", FitTable)
        waiting = len(rows) - going
        table.border_title = "active runs" + (f" · {waiting} queued" if waiting else "")
        empty = self.query_one("#active-empty", Static)
        table.display = bool(rows)
        empty.display = not rows
        if not rows:
            _update(
                empty,
                "No run is going and none is queued. Press 2 to launch one, or from a shell:\n"
                "efficientllm run -m tiny -t fp32 --device cpu",
            )
            if table.row_count:
                table.clear()
            return
        table.set_data(_ACTIVE_COLUMNS, rows, _ACTIVE_PRIORITY)

    def _active_cells(self, run: ActiveRun) -> tuple[str, ...]:
        prog = run.progress
        eta = run.eta_s()
        bar = (bar_line(prog, 5) + f" {prog * 100:3.0f}%") if prog is not None else "-"
        if eta is not None and prog is not None and prog < 1:
            bar += f" {duration(eta)}"
        rate, unit = run.rate()
        speed = (
            f"{num(rate, 3)} {unit.replace('tokens', 'tok').replace('samples', 'smp')}"
            if rate
            else "-"
        )
        if run.loss is not None:
            speed += f" · {num(run.loss, 3)}"
        return (
            f"{run.model} × {run.technique}" + (f" @{run.host}" if run.host else ""),
            bar,
            speed,
            run.phase_text,
            self._energy(run),
            run.device,
        )

    def _energy(self, run: ActiveRun) -> str:
        if run.sample_device and run.started_ns:
            samples = self.elapp.history.window(run.sample_device, run.started_ns)
            energy = energy_integral_j(samples, run.started_ns)
            if energy is not None:
                return f"≈{joules(energy)}"
        return joules(run.window_energy_j) if run.window_energy_j else "-"

    @on(DataTable.RowSelected, "#recent")
    def _open_recent(self, event: DataTable.RowSelected) -> None:
        run_id = event.row_key.value
        if run_id and self.elapp.recent and any(r["run_id"] == run_id for r in self.elapp.recent):
            from efficientllm_tui.tui.screens.detail import RunDetailScreen

            self.app.push_screen(RunDetailScreen(str(run_id)))

    def recent_changed(self, rows: list[dict[str, Any]]) -> None:
        table = self.query_one("#recent", FitTable)
        now_s = self.elapp.now_ns() / 1e9
        cells: dict[str, tuple[str, ...]] = {}
        for row in rows:
            started = row.get("started_at")
            when = ago(now_s - started.timestamp()).replace(" ago", "") if started else "-"
            cells[row["run_id"]] = (
                when,
                f"{row.get('model')} × {row.get('technique')}",
                _result(row),
            )
        if not rows:
            cells[""] = ("-", "nothing stored yet", "")
        table.set_data(_RECENT_COLUMNS, cells, _RECENT_PRIORITY)


def _result(row: dict[str, Any]) -> str:
    """A stored run in one cell: its throughput when it ended ok, else its status."""
    status = row.get("status") or "-"
    metric = metric_catalog.THROUGHPUT.get(row.get("family") or "", "it")
    value = row.get(metric)
    if status == "ok" and value is not None:
        return f"{metric.upper()} {num(value, 3)}"
    return f"[{status_style(status)}]{status}[/]"


def _waiting_cells(row: QueueRow) -> tuple[str, ...]:
    """A queued run in the active-runs table: where it stands in its device's queue."""
    return (
        f"{row.model} × {row.technique}",
        f"queued #{row.position}",
        "-",
        "waiting",
        "-",
        row.device_key,
    )


def _update(widget: Static, text: str) -> None:
    """Update a Static only when its text changes (an update costs a layout pass)."""
    if getattr(widget, "_shown_text", None) != text:
        widget._shown_text = text  # type: ignore[attr-defined]
        widget.update(text)


SCREEN = DashboardScreen
