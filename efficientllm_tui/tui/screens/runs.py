"""Runs: the stored history as a table; filter, sort, open, mark for comparison, delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Input, Select, Static
from textual.worker import Worker, WorkerState

from efficientllm_tui.display import metric_label, num, short_id, status_style
from efficientllm_tui.errors import EfficientLLMError
from efficientllm_tui.runlist import RunFilter, describe, fetch_runs
from efficientllm_tui.tui.messages import StoreChanged
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.fit import FitTable
from profiling import metric_catalog
from runners.protocol import FAMILIES, STATUSES

PAGE = 100
FAMILY_METRICS: dict[str | None, tuple[str, ...]] = {
    None: ("thrpt", "al_s", "amu", "pcu", "aec_w", "eval_ppl"),
    "inference": ("it", "al_s", "ttft_s", "amu", "pcu", "aec_w", "mcr", "eval_ppl"),
    "finetuning": ("st", "al_s", "loss", "amu", "pcu", "aec_w"),
    "pretraining": ("tt", "al_s", "loss", "amu", "pcu", "aec_w"),
}
"""Metric columns shown for a family filter (None: every family, throughput merged)."""
_BASE_COLUMNS = (
    ("mark", "✓"),
    ("started_at", "started"),
    ("family", "family"),
    ("model", "model"),
    ("technique", "technique"),
    ("device", "device"),
    ("status", "status"),
)
_HEADLINE = ("thrpt", "it", "st", "tt", "al_s", "amu", "pcu")
"""Columns kept first after model, technique and status when the table is narrow (the
paper's headline metrics: at 80 columns these show, the start time and the rest after)."""


@dataclass
class RunsPageLoaded(Message):
    """A page of runs rows for one request (stale requests are ignored)."""

    request: int
    offset: int
    rows: list[dict[str, Any]]


class RunsScreen(AppScreen):
    """Stored runs, newest first; enter opens one, space marks it for Compare."""

    NAME = "runs"
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("space", "mark", "Mark"),
        Binding("s", "sort", "Sort"),
        Binding("c", "compare", "Compare"),
        Binding("d,delete", "delete", "Delete"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("r", "reload", "Reload", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.order_by = "started_at"
        self.descending = True
        self.family: str | None = None
        self.more = False
        self._request = 0
        self._loading = False
        self._metrics: tuple[str, ...] = FAMILY_METRICS[None]
        self._filter_timer: Any = None
        self._applied: tuple[Any, ...] | None = None
        """The filter of the rows shown or loading (skip reloads that change nothing)."""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="runs-filters"):
            yield Select(
                [("all families", None)] + [(f, f) for f in FAMILIES],
                value=None,
                allow_blank=False,
                compact=True,
                id="f-family",
            )
            yield Select(
                [("any status", None)] + [(s, s) for s in STATUSES],
                value=None,
                allow_blank=False,
                compact=True,
                id="f-status",
            )
            yield Input(
                placeholder="/ filter: model:tiny t:fp32,bf16 since:2026-11-01 words",
                compact=True,
                id="f-text",
            )
        yield FitTable(id="runs", cursor_type="cell", zebra_stripes=True)
        yield Static(id="runs-status")

    def on_mount(self) -> None:
        self._columns()
        self.query_one("#runs", DataTable).focus()

    @property
    def pending(self) -> bool:
        return self._applied is None or self._loading

    def load_failed(self, worker: Worker[Any]) -> None:
        if worker.group == "runs-page" and worker.state == WorkerState.ERROR:
            self._loading = False
            self._status(f"[red]could not load runs: {worker.error}[/] · r retries")

    def runs_changed(self) -> None:
        self.reload()

    # ------------------------------------------------------------------ loading

    def _filter(self) -> RunFilter:
        family = self.query_one("#f-family", Select).value
        status = self.query_one("#f-status", Select).value
        return RunFilter.parse(
            self.query_one("#f-text", Input).value,
            family=family if isinstance(family, str) else None,
            status=status if isinstance(status, str) else None,
        )

    def reload(self, force: bool = True) -> None:
        try:
            flt = self._filter()
        except EfficientLLMError as e:
            self._status(f"[red]{e}[/]")
            return
        key = (repr(flt), self.order_by, self.descending)
        if not force and key == self._applied:
            return
        self._applied = key
        family = flt.family[0] if len(flt.family) == 1 else None
        if family != self.family:
            self.family = family
            self._columns()
        self._request += 1
        self._loading = True
        self._status("loading…")
        self.load_page(self._request, flt, 0)

    def action_reload(self) -> None:
        self.reload()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-page", name="runs page")
    def load_page(self, request: int, flt: RunFilter, offset: int) -> None:
        rows = fetch_runs(
            self.elapp.store(),
            flt,
            order_by=self.order_by,
            descending=self.descending,
            limit=PAGE,
            offset=offset,
        )
        self.post_message(RunsPageLoaded(request, offset, rows))

    @on(RunsPageLoaded)
    def _page_loaded(self, message: RunsPageLoaded) -> None:
        if message.request != self._request:
            return
        self._loading = False
        table = self.query_one("#runs", FitTable)
        if message.offset == 0:
            keep = table.cursor_coordinate
            self.rows.clear()
        for row in message.rows:
            self.rows.setdefault(row["run_id"], row)
        self._fill()
        self.more = len(message.rows) == PAGE
        if message.offset == 0 and self.rows:
            # Reloads (sort, filter, delete) keep the cursor where it was, within bounds.
            table.move_cursor(
                row=min(keep.row, len(self.rows) - 1), column=keep.column, animate=False
            )
        if not self.rows:
            self._status(
                "No runs match. Start one on the Launch screen (2), or from a shell: "
                "efficientllm run -m tiny -t fp32 --device cpu"
            )
        else:
            self._status()

    @on(DataTable.CellHighlighted, "#runs")
    def _maybe_more(self, event: DataTable.CellHighlighted) -> None:
        table = self.query_one("#runs", DataTable)
        if self.more and not self._loading and event.coordinate.row >= table.row_count - 10:
            self._loading = True
            self.load_page(self._request, self._filter(), len(self.rows))

    @on(Select.Changed)
    def _select_changed(self) -> None:
        if self._applied is not None:  # not the initial values, before the first load
            self.reload(force=False)

    @on(Input.Changed, "#f-text")
    def _text_changed(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.3, lambda: self.reload(force=False))

    @on(Input.Submitted, "#f-text")
    def _text_submitted(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self.reload(force=False)
        self.action_focus_table()

    # ------------------------------------------------------------------ table

    def _columns(self) -> None:
        self._metrics = FAMILY_METRICS.get(self.family, FAMILY_METRICS[None])
        self._fill()

    def _fill(self) -> None:
        """Show self.rows: every column that fits the table's width, whole (widgets.fit)."""
        columns = [(key, self._label(key, label)) for key, label in _BASE_COLUMNS]
        for name in self._metrics:
            label = "IT/ST/TT" if name == "thrpt" else metric_label(name)
            columns.append((name, self._label(name, label)))
        columns.append(("run_id", Text("run id")))
        first = ["mark", "model", "technique", "status"]
        first += [m for m in self._metrics if m in _HEADLINE]
        priority = first + ["started_at"] + [m for m in self._metrics if m not in first]
        priority += ["device", "family", "run_id"]
        # runs from more than one machine (imported, or Ray jobs on other nodes): say where
        many_hosts = len({r["host"] for r in self.rows.values() if r.get("host")}) > 1
        cells = {run_id: self._cells(row, many_hosts) for run_id, row in self.rows.items()}
        self.query_one("#runs", FitTable).set_data(columns, cells, priority)

    def _label(self, key: str, label: str) -> Text:
        if key == self.order_by:
            return Text(f"{label} {'▼' if self.descending else '▲'}", style="bold")
        return Text(label)

    def _cells(self, row: dict[str, Any], many_hosts: bool) -> list[Any]:
        started = row.get("started_at")
        status = row.get("status") or "-"
        cells: list[Any] = [
            Text("✓", style="bold green") if row["run_id"] in self.elapp.marked else "",
            started.strftime("%m-%d %H:%M") if started is not None else "-",
            row.get("family") or "-",
            row.get("model") or "-",
            row.get("technique") or "-",
            (f"{row.get('device') or '-'}@{row['host']}" if many_hosts and row.get("host")
             else row.get("device") or "-"),
            Text(status, style=status_style(status)),
        ]
        for name in self._metrics:
            if name == "thrpt":
                metric = metric_catalog.THROUGHPUT.get(row.get("family") or "", "it")
                value = row.get(metric)
                cells.append(f"{metric.upper()} {num(value, 3)}" if value is not None else "-")
            else:
                cells.append(num(row.get(name)))
        cells.append(short_id(row["run_id"], 40))
        if row.get("simulated"):
            cells[4] = Text(f"{cells[4]} (sim)")
        return cells

    def _status(self, text: str | None = None) -> None:
        if text is None:
            try:
                what = describe(self._filter())
            except EfficientLLMError:
                what = "?"
            arrow = "▼" if self.descending else "▲"
            text = (
                f"{len(self.rows)}{'+' if self.more else ''} runs · {what} · sorted by "
                f"{self.order_by} {arrow} · {len(self.elapp.marked)} marked"
            )
            run_id = self._cursor_run()
            if run_id is not None:  # whole, whatever the width (the table may leave it out)
                text += f"\n[b]{run_id}[/b] · enter opens it"
        self.query_one("#runs-status", Static).update(text)

    @on(DataTable.RowHighlighted, "#runs")
    @on(DataTable.CellHighlighted, "#runs")
    def _cursor_moved(self) -> None:
        if not self._loading and self.rows:
            self._status()

    def _cursor_run(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key in self.rows else None

    # ------------------------------------------------------------------ actions

    def action_open(self) -> None:
        run_id = self._cursor_run()
        if run_id is not None:
            from efficientllm_tui.tui.screens.detail import RunDetailScreen

            self.app.push_screen(RunDetailScreen(run_id))

    @on(DataTable.CellSelected, "#runs")
    def _cell_selected(self) -> None:
        self.action_open()

    def action_mark(self) -> None:
        run_id = self._cursor_run()
        if run_id is None:
            return
        marked = self.elapp.marked
        marked.symmetric_difference_update({run_id})
        table = self.query_one("#runs", FitTable)
        table.set_cell(run_id, "mark", Text("✓", style="bold green") if run_id in marked else "")
        table.action_cursor_down()
        self._status()

    def action_sort(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not table.columns:
            return
        column = list(table.columns)[table.cursor_coordinate.column].value
        if column in ("mark", "thrpt"):
            self.notify(
                "pick a family filter to sort by IT/ST/TT"
                if column == "thrpt"
                else "this column does not sort",
                severity="warning",
            )
            return
        if column == self.order_by:
            self.descending = not self.descending
        else:
            self.order_by, self.descending = str(column), column != "model"
        where = table.cursor_coordinate
        self._columns()
        table.move_cursor(row=where.row, column=where.column, animate=False)
        self.reload()

    def action_compare(self) -> None:
        if not self.elapp.marked:
            self.notify("mark runs with space first", severity="warning")
            return
        self.elapp.action_show("compare")

    def action_focus_filter(self) -> None:
        self.query_one("#f-text", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#runs", DataTable).focus()

    def action_delete(self) -> None:
        ids = sorted(self.elapp.marked) or ([r] if (r := self._cursor_run()) else [])
        if not ids:
            return
        from efficientllm_tui.tui.screens.confirm import ConfirmScreen

        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        what = "marked run(s)" if self.elapp.marked else "run"

        def done(ok: bool | None) -> None:
            if ok:
                self.delete_runs(ids)

        self.app.push_screen(
            ConfirmScreen(
                f"Delete {len(ids)} {what}?",
                f"{shown} and all their samples, steps and metrics "
                "leave the database. Their run dirs stay on disk.",
                yes="Delete",
            ),
            done,
        )

    @work(thread=True, exit_on_error=False, group="store-write", name="delete runs")
    def delete_runs(self, ids: list[str]) -> None:
        n = self.elapp.store().delete_runs(ids)
        self.app.call_from_thread(self._deleted, ids, n)

    def _deleted(self, ids: list[str], n: int) -> None:
        self.elapp.marked.difference_update(ids)
        self.notify(f"deleted {n} run(s)", title="Runs")
        self.app.post_message(StoreChanged())


SCREEN = RunsScreen
