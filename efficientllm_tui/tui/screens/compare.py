"""Compare: marked runs side by side, ranked within their group and workload as the report
ranks them (efficientllm_tui.report), beside the paper's ranks, with charts and loss curves."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from efficientllm_tui.display import metric_label, num
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.bars import Bar, BarChart
from efficientllm_tui.tui.widgets.chart import Series, TimeChart
from efficientllm_tui.tui.widgets.scatter import Point, ScatterPlot
from profiling import metric_catalog

if TYPE_CHECKING:
    from efficientllm_tui.report.record import Row, Section, Workload

PAPER_METRICS = metric_catalog.headline()
"""Metrics the paper scores, in its order (quality last)."""
AXES = (
    ("it", "aec_w"),
    ("it", "al_s"),
    ("st", "al_s"),
    ("tt", "al_s"),
    ("al_s", "amu"),
    ("st", "aec_w"),
    ("tt", "aec_w"),
    ("al_s", "aec_w"),
    ("it", "amu"),
)
"""Trade-off plots: (x, y) metric pairs, cycled with `a`; only pairs that the marked runs
have values for are offered (on a CPU box AEC is NULL, so IT vs AL comes first)."""
PALETTE = ("#4ea1ff", "#ffa24e", "#3fbf7f", "#e8556b", "#b57bff", "#d6c43b", "#35c6c6", "#ff7fd1")
"""Mid-tone run colors readable on dark and light backgrounds."""
_ID_TAIL = re.compile(r"^\d{8}-\d{6}-([0-9a-f]{4})-")


@dataclass
class CompareLoaded(Message):
    """The marked runs (stored rows with metrics and loss curves), grouped as the report
    groups them (ok runs only), and the marked ids no longer stored."""

    runs: list[dict[str, Any]]
    sections: tuple[Section, ...] = ()
    missing: list[str] = field(default_factory=list)


def short_id(run_id: str) -> str:
    """A run's short id: the 4 hex digits a run id carries after its time stamp
    (`20270115-070000-000a-tiny-fp32` -> `000a`), else the id's last 8 characters."""
    m = _ID_TAIL.match(run_id)
    return m.group(1) if m else run_id[-8:]


def started(run: dict[str, Any]) -> str:
    """When a run started, `01-15 07:00` (UTC, as stored), or `not started`."""
    t = run.get("started_at")
    return t.strftime("%m-%d %H:%M") if t is not None else "not started"


class CompareScreen(AppScreen):
    """Runs marked on the Runs screen (space), compared metric by metric."""

    NAME = "compare"
    BINDINGS = [
        Binding("m", "tab('cmp-metrics')", "Metrics"),
        Binding("n", "tab('cmp-scores')", "Scores"),
        Binding("b", "tab('cmp-bars')", "Bars"),
        Binding("p", "tab('cmp-plot')", "Trade-off"),
        Binding("l", "tab('cmp-loss')", "Loss"),
        Binding("a", "axes", "Axes"),
        Binding("u", "unmark", "Unmark all"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data: CompareLoaded | None = None
        self.axes = 0
        self._loaded_for: frozenset[str] | None = None
        self._waiting = False
        self._rank_of: dict[str, tuple[Workload, Row]] = {}

    def compose_body(self) -> ComposeResult:
        yield Static(id="cmp-head")
        with TabbedContent(id="cmp-tabs"):
            with TabPane("Metrics", id="cmp-metrics"):
                yield DataTable(id="cmp-raw", cursor_type="row", zebra_stripes=True,
                                header_height=2)
                yield Static(id="cmp-raw-notes")
            with TabPane("Scores & ranks", id="cmp-scores"):
                yield DataTable(id="cmp-rank", cursor_type="row", zebra_stripes=True)
                yield Static(id="cmp-rank-notes")
            with TabPane("Bars", id="cmp-bars"):
                yield VerticalScroll(id="cmp-bar-box")
            with TabPane("Trade-off", id="cmp-plot"):
                yield ScatterPlot(id="cmp-scatter")
                yield Static(id="cmp-legend")
            with TabPane("Loss", id="cmp-loss"):
                yield TimeChart("loss per step", id="cmp-loss-chart", x_axis="step")
                yield Static(id="cmp-loss-legend")

    @property
    def pending(self) -> bool:
        return self._waiting

    def load_failed(self, worker: Worker[Any]) -> None:
        if worker.group == "compare" and worker.state == WorkerState.ERROR:
            self._waiting = False
            self._loaded_for = None  # coming back here tries again
            self.query_one("#cmp-head", Static).update(
                f"[red]could not load the marked runs: {worker.error}[/] · r retries"
            )

    def resumed(self) -> None:
        if frozenset(self.elapp.marked) != self._loaded_for:
            self.action_reload()

    def runs_changed(self) -> None:
        self._loaded_for = None

    def action_reload(self) -> None:
        marked = sorted(self.elapp.marked)
        self._loaded_for = frozenset(marked)
        if not marked:
            self._show(CompareLoaded([]))
            return
        self.query_one("#cmp-head", Static).update(f"loading {len(marked)} run(s)…")
        self._waiting = True
        self.load(marked)

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare", name="compare")
    def load(self, run_ids: list[str]) -> None:
        from efficientllm_tui.report import build, select

        store = self.elapp.store()
        stored = store.run_ids()
        present = [r for r in run_ids if r in stored]
        runs = select.load_runs(store, present) if present else []
        runs.sort(key=lambda r: (r.get("family") or "", r.get("started_at") is None,
                                 r.get("started_at"), r["run_id"]))
        ok = [r for r in runs if r.get("status") == "ok"]
        sections = build.sections(ok) if ok else ()
        missing = [r for r in run_ids if r not in stored]
        self.post_message(CompareLoaded(runs, sections, missing))

    @on(CompareLoaded)
    def _show(self, message: CompareLoaded) -> None:
        self.data = message
        self._waiting = False
        self._rank_of = {rid: (wl, row) for sec in message.sections for wl in sec.workloads
                         for row in wl.rows for rid in row.run_ids}
        head = self.query_one("#cmp-head", Static)
        tabs = self.query_one("#cmp-tabs", TabbedContent)
        tabs.display = bool(message.runs)
        if not message.runs:
            head.update(
                "No runs marked. On the Runs screen (3), press space on the runs to "
                "compare, then come back here (4)."
            )
            return
        sim = any(r.get("simulated") for r in message.runs)
        n_wl = len(self._workloads())
        head.update(
            f"[b]{len(message.runs)} runs[/b] in {n_wl} workload(s) · ranked within a "
            "workload only, as `efficientllm report` ranks them"
            + (" · [b black on yellow] includes SIMULATED data [/]" if sim else "")
            + (
                f" · [red]{len(message.missing)} marked run(s) no longer stored[/]"
                if message.missing
                else ""
            )
        )
        self._raw()
        self._ranks()
        self._bars()
        self._scatter()
        self._loss()

    # ------------------------------------------------------------------ labels

    def _letter(self, i: int) -> str:
        return string.ascii_uppercase[i % 26]

    def _color(self, i: int) -> str:
        return PALETTE[i % len(PALETTE)]

    def _run_label(self, i: int, run: dict[str, Any]) -> str:
        """`A fp32·tiny 000a 01-15 07:00`: letter, pair, short id and start time."""
        return (f"{self._letter(i)} {run.get('technique')}·{run.get('model')} "
                f"{short_id(str(run['run_id']))} {started(run)}")

    def _column(self, i: int, run: dict[str, Any]) -> Text:
        """A two-line column header: `A fp32·tiny` over `000a 01-15 07:00`."""
        return Text(f"{self._letter(i)} {run.get('technique')}·{run.get('model')}\n"
                    f"  {short_id(str(run['run_id']))} {started(run)}", style=self._color(i))

    def _workloads(self) -> list[tuple[Section, Workload]]:
        assert self.data is not None
        return [(sec, wl) for sec in self.data.sections for wl in sec.workloads]

    def _names(self) -> list[str]:
        assert self.data is not None
        have = {n for r in self.data.runs for n in (r.get("metrics") or {})}
        first = [m for m in PAPER_METRICS if m in have]
        rest = [n for n in metric_catalog.ordered(have) if n not in first
                and metric_catalog.info(n) is not None]
        return first + rest

    # ------------------------------------------------------------------ views

    def _raw(self) -> None:
        assert self.data is not None
        table = self.query_one("#cmp-raw", DataTable)
        table.clear(columns=True)
        table.add_column("metric", key="metric")
        for i, run in enumerate(self.data.runs):
            table.add_column(self._column(i, run), key=run["run_id"])
        table.add_column("unit", key="unit")
        cells = []
        for run in self.data.runs:
            got = self._rank_of.get(run["run_id"])
            cells.append(Text(got[0].tag, style="bold") if got else
                         Text(f"not ranked: {run.get('status')}", style="dim"))
        table.add_row("workload", *cells, "", key="workload")
        notes: list[str] = []  # why values are missing, numbered once each
        for name in self._names():
            values, unit = [], ""
            for run in self.data.runs:
                value, unit_i, _ = (run.get("metrics") or {}).get(name, (None, None, None))
                note = (run.get("metric_notes") or {}).get(name)
                if value is None and note:
                    if note not in notes:
                        notes.append(note)
                    values.append(f"n/a [{notes.index(note) + 1}]")
                else:
                    values.append(num(value))
                unit = unit or unit_i or ""
            known = metric_catalog.info(name)
            label = known.label if known is not None else name
            table.add_row(label, *values, (known.unit if known is not None else unit),
                          key=name)
        self.query_one("#cmp-raw-notes", Static).update(
            Text("\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1)), style="dim"))

    def _ranked_metrics(self) -> list[str]:
        return [m for m in PAPER_METRICS
                if any(m in row.ranks for _, wl in self._workloads() for row in wl.rows)]

    def _ranks(self) -> None:
        """One row per technique configuration of each workload (repeats folded into their
        median): score, our rank within the workload, the paper's rank."""
        assert self.data is not None
        table = self.query_one("#cmp-rank", DataTable)
        table.clear(columns=True)
        metrics = self._ranked_metrics()
        table.add_column("wl", key="wl")
        table.add_column("runs", key="runs")
        table.add_column("technique", key="technique")
        for m in metrics:
            direction = "↑" if metric_catalog.BY_NAME[m].higher_is_better else "↓"
            table.add_column(f"{metric_label(m)} {direction}", key=m)
        index = {r["run_id"]: i for i, r in enumerate(self.data.runs)}
        for _, wl in self._workloads():
            for row in wl.rows:
                runs = Text()
                for rid in row.run_ids:
                    i = index[rid]
                    runs.append(self._letter(i), style=f"bold {self._color(i)}")
                cells: list[Any] = [Text(wl.tag, style="bold"), runs, row.label]
                for m in metrics:
                    cells.append(_rank_cell(row, m))
                table.add_row(*cells, key=f"{wl.tag}:{row.label}")
        notes = []
        for sec, wl in self._workloads():
            pooled = next(t for t in wl.taus if t.metric == "all")
            tau = (f"tau {pooled.tau:+.2f} (n {pooled.n})" if pooled.tau is not None
                   else f"tau -: {pooled.note}")
            notes.append(f"{wl.tag} {sec.title} · {wl.model} · {tau}"
                         + (f" · [{','.join(wl.marks)}]" if wl.marks else ""))
        unranked = [r for r in self.data.runs if r["run_id"] not in self._rank_of]
        if unranked:
            notes.append("not ranked (only runs that ended ok are): " + ", ".join(
                f"{self._letter(index[r['run_id']])} {r.get('status')}" for r in unranked))
        notes.append("cell: score in [0.1, 1] · #our rank within the workload · "
                     "p the paper's rank (≈ nearest size group)")
        if not metrics:
            notes.insert(0, "no scores: only runs that ended ok and have paper metrics rank")
        self.query_one("#cmp-rank-notes", Static).update(Text("\n".join(notes), style="dim"))

    def _bars(self) -> None:
        assert self.data is not None
        box = self.query_one("#cmp-bar-box", VerticalScroll)
        box.remove_children()
        charts = []
        for name in self._names():
            if name not in PAPER_METRICS:
                continue
            bars = []
            for i, run in enumerate(self.data.runs):
                value = (run.get("metrics") or {}).get(name, (None,))[0]
                got = self._rank_of.get(run["run_id"])
                rank = got[1].ranks.get(name) if got else None
                bars.append(Bar(self._run_label(i, run), value, self._color(i),
                                note=f"#{rank} {got[0].tag}" if got and rank else ""))
            better = "higher" if metric_catalog.BY_NAME[name].higher_is_better else "lower"
            chart = BarChart(f"{metric_label(name)} ({better} is better)")
            charts.append((chart, bars))
        box.mount_all([c for c, _ in charts])
        for chart, bars in charts:
            chart.update_bars(bars, lambda v: num(v))

    def usable_axes(self) -> list[tuple[str, str]]:
        """The AXES pairs with values for at least two marked runs (one when no pair has
        two; IT vs AL when none has any)."""
        assert self.data is not None
        runs = self.data.runs

        def points(pair: tuple[str, str]) -> int:
            return sum(1 for r in runs if all(
                (r.get("metrics") or {}).get(n, (None,))[0] is not None for n in pair))

        counts = [(pair, points(pair)) for pair in AXES]
        return ([p for p, n in counts if n >= 2] or [p for p, n in counts if n == 1]
                or [("it", "al_s")])

    def _scatter(self) -> None:
        assert self.data is not None
        usable = self.usable_axes()
        x_name, y_name = usable[self.axes % len(usable)]
        points = []
        legend = []
        for i, run in enumerate(self.data.runs):
            metrics = run.get("metrics") or {}
            x = metrics.get(x_name, (None,))[0]
            y = metrics.get(y_name, (None,))[0]
            color = self._color(i)
            points.append(Point(self._letter(i), self._run_label(i, run), x, y, color))
            legend.append(f"[b {color}]{self._run_label(i, run)}[/]  {metric_label(x_name)}"
                          f"={num(x)} {metric_label(y_name)}={num(y)}")
        self.query_one("#cmp-scatter", ScatterPlot).update_points(
            points, metric_label(x_name), metric_label(y_name)
        )
        others = ", ".join(f"{metric_label(a)}×{metric_label(b)}" for a, b in usable)
        self.query_one("#cmp-legend", Static).update(
            "\n".join(legend) + f"\n[dim]a: next axes with data ({others})[/]"
        )

    def _loss(self) -> None:
        """Training runs' loss against their step, overlaid, one color a run."""
        assert self.data is not None
        series, legend = [], []
        lo, hi = None, None
        for i, run in enumerate(self.data.runs):
            curve = run.get("curve") or []
            if not curve:
                continue
            color = self._color(i)
            series.append(Series(self._letter(i), [(float(s), v) for s, v in curve], color))
            first, last = curve[0][0], curve[-1][0]
            lo = first if lo is None else min(lo, first)
            hi = last if hi is None else max(hi, last)
            legend.append(f"[b {color}]■ {self._run_label(i, run)}[/]  {len(curve)} steps · "
                          f"loss {num(curve[0][1])} → {num(curve[-1][1])}")
        chart = self.query_one("#cmp-loss-chart", TimeChart)
        training = sum(1 for r in self.data.runs
                       if r.get("family") in ("finetuning", "pretraining"))
        chart.plot(series, float(lo or 0), float(max(hi or 1, (lo or 0) + 1)), legend=False,
                   summary=f"{len(series)} of {len(self.data.runs)} marked runs have a loss")
        if not series:
            legend.append("No marked run has a loss per step: loss curves come from "
                          "fine-tuning and pretraining runs; mark them on Runs (3) with space."
                          if not training else
                          "The marked training runs stored no loss per step.")
        self.query_one("#cmp-loss-legend", Static).update("\n".join(legend))

    # ------------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        self.query_one("#cmp-tabs", TabbedContent).active = tab

    def action_axes(self) -> None:
        self.axes += 1
        if self.data and self.data.runs:
            self._scatter()
        self.action_tab("cmp-plot")

    def action_unmark(self) -> None:
        self.elapp.marked.clear()
        self.action_reload()


def _rank_cell(row: Row, metric: str) -> Text:
    """`0.95 #2 p3`: the score of the row's median, our rank, the paper's rank."""
    if metric not in row.ranks:
        return Text("-", style="dim")
    rank = row.ranks[metric]
    text = Text(f"{row.scores[metric]:.2f} #{rank}", style="bold" if rank == 1 else "")
    paper = row.paper.get(metric)
    if paper is not None:
        text.append(f" p{'≈' if paper.nearest else ''}{paper.rank}", style="dim")
    return text


SCREEN = CompareScreen
