"""Compare: marked runs side by side with the paper's normalised scores and ranks."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from efficientllm_tui.display import metric_label, num
from efficientllm_tui.paper import paper_rank
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.bars import Bar, BarChart
from efficientllm_tui.tui.widgets.scatter import Point, ScatterPlot
from profiling import metric_catalog

PAPER_METRICS = metric_catalog.headline()
"""Metrics the paper scores, in its order (quality last)."""
AXES = (
    ("it", "aec_w"),
    ("al_s", "amu"),
    ("st", "aec_w"),
    ("tt", "aec_w"),
    ("al_s", "aec_w"),
    ("it", "amu"),
)
"""Trade-off plots: (x, y) metric pairs, cycled with `a`."""
PALETTE = ("#4ea1ff", "#ffa24e", "#3fbf7f", "#e8556b", "#b57bff", "#d6c43b", "#35c6c6", "#ff7fd1")
"""Mid-tone run colors readable on dark and light backgrounds."""


@dataclass
class CompareLoaded(Message):
    """The marked runs (stored rows with metrics) and their leaderboard rows."""

    runs: list[dict[str, Any]]
    board: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class CompareScreen(AppScreen):
    """Runs marked on the Runs screen (space), compared metric by metric."""

    NAME = "compare"
    BINDINGS = [
        Binding("m", "tab('cmp-metrics')", "Metrics"),
        Binding("n", "tab('cmp-scores')", "Scores"),
        Binding("b", "tab('cmp-bars')", "Bars"),
        Binding("p", "tab('cmp-plot')", "Trade-off"),
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

    def compose_body(self) -> ComposeResult:
        yield Static(id="cmp-head")
        with TabbedContent(id="cmp-tabs"):
            with TabPane("Metrics", id="cmp-metrics"):
                yield DataTable(id="cmp-raw", cursor_type="row", zebra_stripes=True)
                yield Static(id="cmp-raw-notes")
            with TabPane("Scores & ranks", id="cmp-scores"):
                yield DataTable(id="cmp-rank", cursor_type="row", zebra_stripes=True)
            with TabPane("Bars", id="cmp-bars"):
                yield VerticalScroll(id="cmp-bar-box")
            with TabPane("Trade-off", id="cmp-plot"):
                yield ScatterPlot(id="cmp-scatter")
                yield Static(id="cmp-legend")

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
        store = self.elapp.store()
        runs, missing = [], []
        for run_id in run_ids:
            run = store.get_run(run_id)
            (runs.append(run) if run is not None else missing.append(run_id))
        board = store.leaderboard(run_ids=[r["run_id"] for r in runs]) if runs else []
        runs.sort(
            key=lambda r: (
                r.get("family") or "",
                r.get("started_at") is None,
                r.get("started_at"),
                r["run_id"],
            )
        )
        self.post_message(CompareLoaded(runs, board, missing))

    @on(CompareLoaded)
    def _show(self, message: CompareLoaded) -> None:
        self.data = message
        self._waiting = False
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
        head.update(
            f"[b]{len(message.runs)} runs[/b] · score: the paper's min-max to [0.1, 1] over "
            "these runs, higher is better · rank 1 = best per family/group/model/device"
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

    # ------------------------------------------------------------------ views

    def _letter(self, i: int) -> str:
        return string.ascii_uppercase[i % 26]

    def _run_label(self, i: int, run: dict[str, Any]) -> str:
        return f"{self._letter(i)} {run.get('technique')}·{run.get('model')}"

    def _names(self) -> list[str]:
        assert self.data is not None
        have = {n for r in self.data.runs for n in (r.get("metrics") or {})}
        first = [m for m in PAPER_METRICS if m in have]
        rest = [n for n in metric_catalog.ordered(have) if n not in first
                and metric_catalog.info(n) is not None]
        return first + rest

    def _raw(self) -> None:
        assert self.data is not None
        table = self.query_one("#cmp-raw", DataTable)
        table.clear(columns=True)
        table.add_column("metric", key="metric")
        for i, run in enumerate(self.data.runs):
            table.add_column(
                Text(self._run_label(i, run), style=PALETTE[i % len(PALETTE)]), key=run["run_id"]
            )
        table.add_column("unit", key="unit")
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
            table.add_row(metric_label(name), *values, unit, key=name)
        self.query_one("#cmp-raw-notes", Static).update(
            Text("\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1)), style="dim"))

    def _board(self) -> dict[tuple[str, str], dict[str, Any]]:
        assert self.data is not None
        return {(b["run_id"], b["metric"]): b for b in self.data.board}

    def _ranks(self) -> None:
        assert self.data is not None
        board = self._board()
        table = self.query_one("#cmp-rank", DataTable)
        table.clear(columns=True)
        table.add_column("metric", key="metric")
        for i, run in enumerate(self.data.runs):
            table.add_column(
                Text(self._run_label(i, run), style=PALETTE[i % len(PALETTE)]), key=run["run_id"]
            )
        metrics = [
            m for m in PAPER_METRICS if any((r["run_id"], m) in board for r in self.data.runs)
        ]
        for name in metrics:
            cells: list[Any] = []
            for run in self.data.runs:
                b = board.get((run["run_id"], name))
                ours = f"{b['score']:.2f} #{b['rank']}" if b else "-"
                paper = paper_rank(
                    run.get("family") or "",
                    run.get("group_name"),
                    run.get("technique") or "",
                    run.get("model"),
                    name,
                )
                text = Text(ours, style="bold" if b and b["rank"] == 1 else "")
                if paper is not None:
                    near = "≈" if paper.nearest else ""
                    text.append(f"  paper #{paper.rank} ({near}{paper.group})", style="dim")
                cells.append(text)
            direction = "↑" if board_direction(self.data.board, name) else "↓"
            table.add_row(f"{metric_label(name)} {direction}", *cells, key=name)
        if not metrics:
            table.add_row(
                "no scores: only runs with status ok and paper metrics are ranked",
                *([""] * len(self.data.runs)),
            )

    def _bars(self) -> None:
        assert self.data is not None
        box = self.query_one("#cmp-bar-box", VerticalScroll)
        box.remove_children()
        board = self._board()
        charts = []
        for name in self._names():
            if name not in PAPER_METRICS:
                continue
            bars = []
            for i, run in enumerate(self.data.runs):
                value = (run.get("metrics") or {}).get(name, (None,))[0]
                b = board.get((run["run_id"], name))
                bars.append(
                    Bar(
                        self._run_label(i, run),
                        value,
                        PALETTE[i % len(PALETTE)],
                        note=f"#{b['rank']}" if b else "",
                    )
                )
            better = "higher" if board_direction(self.data.board, name) else "lower"
            chart = BarChart(f"{metric_label(name)} ({better} is better)")
            charts.append((chart, bars))
        box.mount_all([c for c, _ in charts])
        for chart, bars in charts:
            chart.update_bars(bars, lambda v: num(v))

    def _scatter(self) -> None:
        assert self.data is not None
        have = {n for r in self.data.runs for n in (r.get("metrics") or {})}
        usable = [a for a in AXES if a[0] in have and a[1] in have] or [AXES[0]]
        x_name, y_name = usable[self.axes % len(usable)]
        points = []
        legend = []
        for i, run in enumerate(self.data.runs):
            metrics = run.get("metrics") or {}
            x = metrics.get(x_name, (None,))[0]
            y = metrics.get(y_name, (None,))[0]
            color = PALETTE[i % len(PALETTE)]
            points.append(Point(self._letter(i), self._run_label(i, run), x, y, color))
            legend.append(
                f"[b {color}]{self._letter(i)}[/] {run.get('technique')} × "
                f"{run.get('model')}  {metric_label(x_name)}={num(x)} "
                f"{metric_label(y_name)}={num(y)}"
            )
        self.query_one("#cmp-scatter", ScatterPlot).update_points(
            points, metric_label(x_name), metric_label(y_name)
        )
        others = ", ".join(f"{metric_label(a)}×{metric_label(b)}" for a, b in usable)
        self.query_one("#cmp-legend", Static).update(
            "\n".join(legend) + f"\n[dim]a: next axes ({others})[/]"
        )

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


def board_direction(board: list[dict[str, Any]], metric: str) -> bool:
    """True when a higher value of `metric` is better (from the store's directions)."""
    for b in board:
        if b["metric"] == metric:
            return bool(b["higher_is_better"])
    from efficientllm_tui.store.schema import METRIC_DIRECTIONS

    return METRIC_DIRECTIONS.get(metric, True)


SCREEN = CompareScreen
