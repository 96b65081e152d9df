"""Study: pick a study (the sweep that queued runs) and read its report's tables, rebuilt as
its runs land: per group and workload, medians over repeats, our rank beside the paper's, tau.

The tables are `efficientllm report`'s own (efficientllm_tui.report.table), so the screen and
the written report say the same thing. The store is polled every POLL_S with one short query
(a connection opened and closed each time: no lock held between reads); the report is rebuilt
only when the study's counts change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import ContentSwitcher, DataTable, Static
from textual.worker import Worker, WorkerState

from efficientllm_tui.tui.screens.base import AppScreen

if TYPE_CHECKING:
    from efficientllm_tui.report.record import Report, Workload
    from efficientllm_tui.report.select import StudyCount
    from efficientllm_tui.report.table import Table

POLL_S = 2.0
"""How often the store is asked whether a study's runs changed."""


@dataclass
class StudiesRead(Message):
    """Every stored study with its counts."""

    studies: list[StudyCount]


@dataclass
class ReportBuilt(Message):
    """A study's report, or why there is none yet (no run finished ok)."""

    study: str
    count: StudyCount | None
    report: Report | None = None
    why: str = ""
    workloads: list[Workload] = field(default_factory=list)


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%m-%d %H:%M") if t is not None else "-"


class StudyScreen(AppScreen):
    """The studies stored in the database, and one study's tables, live."""

    NAME = "study"
    BINDINGS = [
        Binding("s", "studies", "Studies"),
        Binding("escape", "studies", "Studies", show=False),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.studies: list[StudyCount] = []
        self.study: str | None = None
        """The study shown (None: the list)."""
        self.built: ReportBuilt | None = None
        self._built_for: StudyCount | None = None
        self._reading = self._building = False
        self._listed = False
        self._wl_tag: str | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("reading studies…", id="study-head")
        with ContentSwitcher(id="study-switch", initial="study-pick"):
            with Vertical(id="study-pick"):
                yield DataTable(id="study-list", cursor_type="row", zebra_stripes=True)
            with Vertical(id="study-view"):
                yield DataTable(id="study-workloads", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="study-tables"):
                    for part in ("raw", "rank", "tau"):
                        yield Static(id=f"study-{part}-caption", classes="study-caption")
                        yield DataTable(id=f"study-{part}", cursor_type="none",
                                        zebra_stripes=True, classes="study-table")
                        yield Static(id=f"study-{part}-notes", classes="study-notes")

    def on_mount(self) -> None:
        table = self.query_one("#study-list", DataTable)
        for key, label in (("study", "study"), ("runs", "runs"), ("ok", "ok"),
                           ("other", "not ok"), ("queued", "queued"), ("first", "first start"),
                           ("last", "last end")):
            table.add_column(label, key=key)
        self.set_interval(POLL_S, self.poll)

    @property
    def pending(self) -> bool:
        return self._reading or self._building

    def load_failed(self, worker: Worker[Any]) -> None:
        if worker.group in ("study-poll", "study-build") and worker.state == WorkerState.ERROR:
            self._reading = self._building = False
            self._built_for = None  # the next poll tries again
            self._head(f"[red]could not read the studies: {worker.error}[/] · retrying")

    def resumed(self) -> None:
        self.poll()

    def runs_changed(self) -> None:
        self.poll()

    def queue_changed(self) -> None:
        """The app read the queue back: the queued counts may have changed."""
        if self._listed:
            self._list()
        if self.built is not None:
            self._show_head()

    # ------------------------------------------------------------------ reading

    def poll(self) -> None:
        """Ask the store for the studies' counts (skipped while hidden or still reading)."""
        if self.is_current and not self._reading:
            self._reading = True
            self.read_studies()

    def action_reload(self) -> None:
        self._built_for = None
        self.poll()

    @work(thread=True, exclusive=True, exit_on_error=False, group="study-poll",
          name="study counts")
    def read_studies(self) -> None:
        from efficientllm_tui.report import select

        self.post_message(StudiesRead(select.studies(self.elapp.store())))

    @on(StudiesRead)
    def _studies_read(self, message: StudiesRead) -> None:
        self._reading = False
        self.studies = message.studies
        self._listed = True
        self._list()
        if self.study is None:
            return
        count = next((s for s in self.studies if s.study == self.study), None)
        if not self._building and (count != self._built_for or self.built is None):
            self._built_for = count
            self._building = True
            self.build(self.study, count)

    @work(thread=True, exclusive=True, exit_on_error=False, group="study-build",
          name="study report")
    def build(self, study: str, count: StudyCount | None) -> None:
        from efficientllm_tui.errors import BadInput
        from efficientllm_tui.report.build import build_report

        try:
            report = build_report(self.elapp.store(), study=study)
        except BadInput as e:
            self.post_message(ReportBuilt(study, count, why=str(e)))
            return
        workloads = [wl for sec in report.sections for wl in sec.workloads]
        self.post_message(ReportBuilt(study, count, report, workloads=workloads))

    # ------------------------------------------------------------------ the list

    def _queued(self, study: str) -> int:
        return sum(1 for r in self.elapp.queued if r.sweep_id == study)

    def _list(self) -> None:
        table = self.query_one("#study-list", DataTable)
        known = [s.study for s in self.studies]
        only_queued = sorted({r.sweep_id for r in self.elapp.queued
                              if r.sweep_id and r.sweep_id not in known})
        cursor = table.cursor_row
        table.clear()
        for s in self.studies:
            table.add_row(s.study, str(s.runs), str(s.ok), str(s.runs - s.ok),
                          str(self._queued(s.study)), _when(s.first_started),
                          _when(s.last_ended), key=s.study)
        for study in only_queued:
            table.add_row(study, "0", "0", "0", str(self._queued(study)), "-", "-", key=study)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        if self.study is None:
            self._head(
                f"{table.row_count} stud{'y' if table.row_count == 1 else 'ies'} · enter shows "
                "a study's tables, refreshed as its runs land" if table.row_count else
                "No study yet: `efficientllm study ci-tiny` (or `study paper`) queues one; "
                "its runs are tagged with the study id and show here as they land.")

    @on(DataTable.RowSelected, "#study-list")
    def _picked(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.open(str(event.row_key.value))

    def open(self, study: str) -> None:
        """Show one study's tables (built now, then whenever its runs change)."""
        self.study = study
        self.built, self._built_for, self._wl_tag = None, None, None
        self.query_one("#study-switch", ContentSwitcher).current = "study-view"
        self.query_one("#study-view").display = False
        self._head(f"building the report of study {study}…")
        self.query_one("#study-workloads", DataTable).focus()
        self._reading = False
        self.poll()

    def action_studies(self) -> None:
        if self.study is None:
            return
        self.study, self.built = None, None
        self.query_one("#study-switch", ContentSwitcher).current = "study-pick"
        self.query_one("#study-list", DataTable).focus()
        self._list()

    # ------------------------------------------------------------------ one study

    @on(ReportBuilt)
    def _built(self, message: ReportBuilt) -> None:
        self._building = False
        if message.study != self.study:
            return  # the user went back meanwhile
        self.built = message
        view = self.query_one("#study-view")
        view.display = message.report is not None
        self._show_head()
        if message.report is None:
            return
        table = self.query_one("#study-workloads", DataTable)
        from efficientllm_tui.report import table as report_table

        summary = report_table.summary_table(message.report)
        _fill(table, summary)
        tags = [wl.tag for wl in message.workloads]
        row = tags.index(self._wl_tag) if self._wl_tag in tags else 0
        table.move_cursor(row=row)
        self._workload(row)

    def _show_head(self) -> None:
        built = self.built
        if built is None:
            return
        queued = self._queued(built.study)
        waiting = f" · {queued} still queued" if queued else ""
        now = datetime.fromtimestamp(self.elapp.now_ns() / 1e9, UTC).strftime("%H:%M:%S")
        if built.report is None:
            self._head(f"[b]{built.study}[/b] · {built.why}{waiting} · the tables appear as "
                       f"its runs land (read {now}) · s: studies")
            return
        report = built.report
        running = sum(s.status == "running" for s in report.skipped)
        failed = len(report.skipped) - running  # stored not ok: failed, oom, cancelled...
        left = f" · {failed} left out (not ok)" if failed else ""
        left += f" · {running} running" if running else ""
        self._head(f"[b]{built.study}[/b] · {report.run_count} ok runs in "
                   f"{len(built.workloads)} workloads{left}{waiting} · ranked within a workload"
                   f" only · updated {now} · s: studies")

    @on(DataTable.RowHighlighted, "#study-workloads")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._workload(event.cursor_row)

    def _workload(self, index: int) -> None:
        """Show the tables of the index-th workload (raw metrics, ranks, tau)."""
        from efficientllm_tui.report import table as report_table
        from efficientllm_tui.report.record import MARKS

        built = self.built
        if built is None or not built.workloads:
            return
        wl = built.workloads[max(0, min(index, len(built.workloads) - 1))]
        self._wl_tag = wl.tag
        parts = (("raw", report_table.raw_table(wl)), ("rank", report_table.rank_table(wl)),
                 ("tau", report_table.tau_table(wl)))
        for part, t in parts:
            self.query_one(f"#study-{part}-caption", Static).update(Text(t.caption, style="bold"))
            _fill(self.query_one(f"#study-{part}", DataTable), t)
            notes = list(t.notes)
            if part == "raw":
                notes += [f"[{m}] {MARKS[m]}" for m in wl.marks] + [f"{wl.tag}: {wl.key}"]
            self.query_one(f"#study-{part}-notes", Static).update(
                Text("\n".join(notes), style="dim"))

    def _head(self, text: str) -> None:
        self.query_one("#study-head", Static).update(text)


def _fill(widget: DataTable[Any], t: Table) -> None:
    """Put one of the report's tables (headers and rows of text) into a DataTable."""
    widget.clear(columns=True)
    for i, h in enumerate(t.headers):
        widget.add_column(h, key=str(i))
    for row in t.rows:
        widget.add_row(*row)


SCREEN = StudyScreen
