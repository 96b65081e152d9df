"""One stored run: its facts, metrics, error text, and its time series replayed as graphs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState

from efficientllm_tui.display import contention, duration, num, status_style
from efficientllm_tui.live.history import source_label
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.chart import Series, TimeChart, nice_max
from profiling import metric_catalog
from profiling.sample import FIELD_NAMES, Sample


@dataclass
class RunLoaded(Message):
    """A run's row, metrics, samples (by device) and steps, read by a worker."""

    run: dict[str, Any] | None
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


class RunDetailScreen(AppScreen):
    """Pushed from Runs; escape goes back."""

    NAME = "runs"
    PALETTE_NAME = "Run detail"
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("d", "next_device", "Device"),
        Binding("l", "toggle_steps", "Loss/latency"),
        Binding("space", "mark", "Mark"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.data: RunLoaded | None = None
        self.device: str | None = None
        self.show_loss = True
        self._failed = False

    def compose_body(self) -> ComposeResult:
        yield Static(f"loading {self.run_id}…", id="detail-head")
        yield Static(id="detail-error")
        with Horizontal(id="detail-main"):
            yield DataTable(id="detail-metrics", cursor_type="row", zebra_stripes=True)
            with Grid(id="detail-charts"):
                yield TimeChart("memory GiB", id="d-mem", x_axis="elapsed")
                yield TimeChart("activity %", id="d-act", y_max=100.0, x_axis="elapsed")
                yield TimeChart("power W", id="d-power", x_axis="elapsed")
                yield TimeChart("loss per step", id="d-steps", x_axis="step")

    @property
    def pending(self) -> bool:
        return self.data is None and not self._failed

    def load_failed(self, worker: Worker[Any]) -> None:
        if worker.group == "detail" and worker.state == WorkerState.ERROR:
            self._failed = True
            self.query_one("#detail-head", Static).update(
                f"[red]could not load {self.run_id}: {worker.error}[/]"
            )

    def on_mount(self) -> None:
        table = self.query_one("#detail-metrics", DataTable)
        table.border_title = "metrics"
        for key in ("metric", "value", "unit", "source", "why missing / note"):
            table.add_column(key, key=key)
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail", name="run detail")
    def load(self) -> None:
        store = self.elapp.store()
        run = store.get_run(self.run_id)
        if run is None:
            self.post_message(RunLoaded(None))
            return
        by_device: dict[str, list[Sample]] = {}
        names = [n for n in FIELD_NAMES]
        for row in store.samples(self.run_id).select(names).to_pylist():
            by_device.setdefault(row["device"], []).append(Sample(**row))
        steps = store.steps(self.run_id).to_pylist()
        self.post_message(RunLoaded(run, by_device, steps))

    @on(RunLoaded)
    def _loaded(self, message: RunLoaded) -> None:
        self.data = message
        run = message.run
        head = self.query_one("#detail-head", Static)
        if run is None:
            head.update(f"[red]run {self.run_id} is not in the database[/] (deleted?)")
            return
        devices = sorted(message.samples, key=lambda d: (d == "cpu", d))
        want = run.get("device") or ""
        preferred = f"gpu{want.partition(':')[2] or 0}" if want.startswith("cuda") else "cpu"
        self.device = (
            preferred if preferred in message.samples else (devices[0] if devices else None)
        )
        head.update(self._head(run))
        error = self.query_one("#detail-error", Static)
        if run.get("error_text"):
            error.update(f"⚠ {run.get('error_type') or 'error'}: {run['error_text']}")
            error.add_class("-shown")
        self._metrics(run)
        self._charts()

    def _head(self, run: dict[str, Any]) -> str:
        status = run.get("status") or "?"
        started, ended = run.get("started_at"), run.get("ended_at")
        took = duration((ended - started).total_seconds()) if started and ended else "-"
        badges = ""
        if run.get("simulated"):
            badges += " [b black on yellow] SIMULATED [/]"
        if run.get("weights") == "random":
            badges += " [dim](random weights: cost metrics only)[/]"
        mark = " [b green]✓ marked[/]" if self.run_id in self.elapp.marked else ""
        when = started.strftime("%Y-%m-%d %H:%M:%S") if started else "-"
        shared = contention(run)
        if run.get("contended"):
            badges += " [b white on red] CONTENDED [/]"
        return (
            f"[b]{run.get('model')} × {run.get('technique')}[/b] · {run.get('family')}"
            f"/{run.get('group_name') or '-'} · [{status_style(status)}]{status}[/]"
            f"{badges}{mark}\n{self.run_id} · {run.get('device')} on {run.get('host') or '-'}"
            f" · {when} · took {took} · batch {run.get('batch_size')} seq {run.get('seq_len')}"
            f" new {run.get('new_tokens')} steps {run.get('steps')} (+{run.get('warmup')})"
            + (f"\ncontended: {escape(shared)}" if shared else "")
        )

    def _metrics(self, run: dict[str, Any]) -> None:
        table = self.query_one("#detail-metrics", DataTable)
        table.clear()
        notes = run.get("metric_notes") or {}
        metrics = run.get("metrics") or {}
        for name in metric_catalog.ordered(list(metrics), run.get("family")):
            value, unit, source = metrics[name]
            label, unit = metric_cells(name, unit)
            table.add_row(label, num(value), unit, source or "", notes.get(name, ""), key=name)
        if not run.get("metrics"):
            table.add_row("no metrics", "", "", "", "")

    def _charts(self) -> None:
        data = self.data
        if data is None or data.run is None:
            return
        theme = self.app.current_theme
        c1, c2 = theme.primary, theme.warning or "yellow"
        samples = data.samples.get(self.device or "", [])
        t_first = samples[0].t_ns if samples else 0
        x1 = (samples[-1].t_ns - t_first) / 1e9 if samples else 1.0

        def pts(attr: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
            return [
                ((s.t_ns - t_first) / 1e9, None if (v := getattr(s, attr)) is None else v * scale)
                for s in samples
            ]

        where = f"{self.device} via {source_label(samples[-1])}" if samples else "no samples"
        mem = self.query_one("#d-mem", TimeChart)
        total = samples[-1].mem_total_bytes if samples else None
        mem.plot(
            [Series("used", pts("mem_used_bytes", 1 / 2**30), c1, area=True)],
            0.0,
            max(x1, 1.0),
            y_max=total / 2**30 if total else None,
            summary=where,
        )
        act = self.query_one("#d-act", TimeChart)
        if samples and samples[-1].sm_active_pct is not None:
            act.plot(
                [
                    Series("SM", pts("sm_active_pct"), c1),
                    Series("tensor", pts("tensor_active_pct"), c2),
                ],
                0.0,
                max(x1, 1.0),
            )
        else:
            act.plot([Series("util", pts("util_pct"), c1)], 0.0, max(x1, 1.0))
        power = self.query_one("#d-power", TimeChart)
        peak = max((s.power_w for s in samples if s.power_w is not None), default=None)
        power.plot(
            [Series("W", pts("power_w"), c2, area=True)],
            0.0,
            max(x1, 1.0),
            y_max=nice_max(peak) if peak else None,
            summary=f"peak {peak:.0f} W" if peak else "no power samples",
        )
        self._steps_chart()

    def _steps_chart(self) -> None:
        steps = self.data.steps if self.data else []
        chart = self.query_one("#d-steps", TimeChart)
        has_loss = any(s.get("loss") is not None for s in steps)
        use_loss = self.show_loss and has_loss
        key, title = ("loss", "loss per step") if use_loss else ("latency_s", "latency ms per step")
        scale = 1.0 if use_loss else 1000.0
        points = [
            (float(i), None if s.get(key) is None else s[key] * scale) for i, s in enumerate(steps)
        ]
        phases = sorted({s.get("phase") or "?" for s in steps})
        chart.plot(
            [Series(key, points, self.app.current_theme.success or "green")],
            0.0,
            float(max(1, len(steps) - 1)),
            legend=False,
            title=title,
            summary=f"{len(steps)} steps ({', '.join(phases)})" if steps else "no steps",
        )

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_next_device(self) -> None:
        if not self.data or not self.data.samples:
            return
        devices = sorted(self.data.samples, key=lambda d: (d == "cpu", d))
        i = devices.index(self.device) if self.device in devices else -1
        self.device = devices[(i + 1) % len(devices)]
        self._charts()

    def action_toggle_steps(self) -> None:
        self.show_loss = not self.show_loss
        self._steps_chart()

    def action_mark(self) -> None:
        self.elapp.marked.symmetric_difference_update({self.run_id})
        if self.data and self.data.run:
            self.query_one("#detail-head", Static).update(self._head(self.data.run))


def metric_cells(name: str, stored_unit: str | None) -> tuple[str, str]:
    """The label and unit cells of one metric row, each said once: the catalog's label
    without its unit (`AL`) and the catalog's short unit (`s`, `tok/s`), the stored unit
    for a name the catalog cannot describe (shown as stored)."""
    known = metric_catalog.describe(name)
    if known is None:
        return name, stored_unit or ""
    unit = known.short_unit or known.unit
    return known.label, "" if unit == known.label else unit
