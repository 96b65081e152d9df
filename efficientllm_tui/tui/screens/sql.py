"""SQL console: an editor over the DuckDB file, read-only unless writes are switched on.

Laid out as harlequin is: the schema tree (tables, views, columns with types) beside a
highlighted editor that completes table and column names, and a result grid below with a tab
per statement that returns rows. Values are written as `efficientllm sql` writes them
(display.sql_cell): NULL, true/false, INTERVAL and TIMESTAMP as DuckDB spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Static, Tab, Tabs

from efficientllm_tui.display import sql_cell
from efficientllm_tui.errors import EfficientLLMError
from efficientllm_tui.store.console import (
    HISTORY_FILE,
    ConsoleQuery,
    ConsoleResult,
    SchemaTable,
    SqlHistory,
    export_query,
    schema_tables,
)
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.widgets.schema_tree import SchemaTree
from efficientllm_tui.tui.widgets.sql_editor import SqlEditor

ROW_LIMIT = 1000
STARTER = (
    "SELECT technique, model, status, it, al_s, amu, aec_w\n"
    "FROM run_metrics ORDER BY started_at DESC LIMIT 20"
)


@dataclass
class QueryFinished(Message):
    """A console query ended: its results (one per statement with rows), or the error to
    show under the editor."""

    query: ConsoleQuery
    results: list[ConsoleResult] | None = None
    error: str | None = None


@dataclass
class SchemaLoaded(Message):
    """The database's tables and views were read (for the tree and completion)."""

    tables: list[SchemaTable]


class ExportScreen(ModalScreen[Path | None]):
    """Asks where to write the results; the extension picks CSV, JSON or Parquet."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: Path) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(
                "[b]Export results[/b] — the whole result, not only the rows shown",
                id="dialog-title",
            )
            yield Input(str(self.default), id="export-path")
            yield Static(
                "the file name's extension picks the format: .csv, .json or .parquet",
                classes="muted",
            )
            yield Static(id="export-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Export", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        text = self.query_one(Input).value.strip()
        path = Path(text).expanduser()
        if not text or path.suffix.lower() not in (".csv", ".json", ".parquet", ".pq"):
            self.query_one("#export-error", Static).update(
                "give a file path ending in .csv, .json or .parquet"
            )
            return
        self.dismiss(path)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class SqlScreen(AppScreen):
    """Schema tree, editor and results; ctrl+enter (or ctrl+r) runs, escape cancels."""

    NAME = "sql"
    BINDINGS = [
        Binding("ctrl+enter,ctrl+r", "run", "Run", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
        Binding("ctrl+up", "history(-1)", "History", priority=True),
        Binding("ctrl+down", "history(1)", "Next in history", show=False, priority=True),
        Binding("ctrl+s", "export", "Export", priority=True),
        Binding("ctrl+t", "toggle_write", "Write", priority=True),
        Binding("ctrl+b", "toggle_tables", "Tables", priority=True),
        Binding("ctrl+pagedown", "result(1)", "Next result", show=False, priority=True),
        Binding("ctrl+pageup", "result(-1)", "Prev result", show=False, priority=True),
        Binding("ctrl+l", "focus_results", "Results", show=False, priority=True),
    ]
    DEFAULT_CSS = """
    #sql-body { height: 1fr; }
    #sql-main { width: 1fr; }
    #result-tabs { height: 2; display: none; }
    #result-tabs.-shown { display: block; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.history = SqlHistory(Path("/nonexistent"))
        self.history_pos: int | None = None
        self.read_only = True
        self.running: ConsoleQuery | None = None
        self.last_sql: str | None = None
        self.results: list[ConsoleResult] = []
        self.shown = 0
        """Index in `results` of the result in the grid."""
        self.schema_pending = True
        self._tabs_made = 0

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="sql-body"):
            yield SchemaTree(id="schema")
            with Vertical(id="sql-main"):
                yield SqlEditor(STARTER, id="editor")
                yield Static(id="sql-status")
                yield Static(id="sql-error")
                yield Tabs(id="result-tabs")
                yield DataTable(id="results", zebra_stripes=True)

    def on_mount(self) -> None:
        self.history = SqlHistory(self.elapp.home / HISTORY_FILE).load()
        editor = self.query_one("#editor", SqlEditor)
        editor.border_title = "SQL · DuckDB"
        editor.border_subtitle = "tab completes names · ctrl+a selects all"
        if self.history.entries:
            editor.text = self.history.entries[-1]
        editor.focus()
        # The tree takes a third of a small terminal: shown from 100 columns, ctrl+b toggles.
        self.query_one("#schema", SchemaTree).display = self.app.size.width >= 100
        self._status("ctrl+enter or ctrl+r runs · ctrl+b tables and columns · "
                     "F1-F5 switch screens")
        self.load_schema()

    @work(thread=True, exit_on_error=False, group="sql-schema", name="sql schema")
    def load_schema(self) -> None:
        try:
            tables = schema_tables(self.elapp.store())
        except EfficientLLMError:
            tables = []  # no database yet: no tree, no completion; queries say why
        self.post_message(SchemaLoaded(tables))

    @on(SchemaLoaded)
    def _schema_loaded(self, message: SchemaLoaded) -> None:
        self.schema_pending = False
        self.query_one("#editor", SqlEditor).schema = message.tables
        self.query_one("#schema", SchemaTree).show(message.tables)

    @on(SchemaTree.Picked)
    def _picked(self, message: SchemaTree.Picked) -> None:
        editor = self.query_one("#editor", SqlEditor)
        editor.insert(message.name)
        editor.focus()

    @on(SqlEditor.Hint)
    def _hint(self, message: SqlEditor.Hint) -> None:
        names = message.names
        shown = " ".join(names[:6]) + (f" +{len(names) - 6}" if len(names) > 6 else "")
        message.editor.border_subtitle = (f"tab: {shown}" if names else
                                          "tab completes names · ctrl+a selects all")

    def action_toggle_tables(self) -> None:
        tree = self.query_one("#schema", SchemaTree)
        tree.display = not tree.display
        if tree.display:
            tree.focus()
        else:
            self.query_one("#editor", SqlEditor).focus()

    def on_unmount(self) -> None:
        if self.running is not None:
            self.running.cancel()

    def _status(self, text: str) -> None:
        mode = "[b black on yellow] WRITE [/]" if not self.read_only else "[b]read-only[/b]"
        self.query_one("#sql-status", Static).update(f"{mode} · {text}")

    def _error(self, text: str | None) -> None:
        error = self.query_one("#sql-error", Static)
        error.update(f"⚠ {text}" if text else "")
        error.set_class(bool(text), "-shown")

    # ------------------------------------------------------------------ running

    @property
    def pending(self) -> bool:
        return self.running is not None or self.schema_pending

    def action_run(self) -> None:
        sql = self.query_one("#editor", SqlEditor).text.strip()
        if not sql:
            self._error("type a query first")
            return
        if self.running is not None:
            self.notify("a query is running; escape cancels it", severity="warning")
            return
        try:
            self.history.add(sql)
        except EfficientLLMError as e:
            self.notify(str(e), title=e.title, severity="warning")
        self.history_pos = None
        self._error(None)
        self.running = ConsoleQuery(self.elapp.store(), sql, read_only=self.read_only)
        self._status("running… (escape cancels)")
        self.run_query(self.running)

    @work(thread=True, exit_on_error=False, group="sql", name="sql query")
    def run_query(self, query: ConsoleQuery) -> None:
        try:
            results = query.run_all(limit=ROW_LIMIT)
        except EfficientLLMError as e:
            self.post_message(QueryFinished(query, error=str(e)))
            return
        self.post_message(QueryFinished(query, results=results))

    @on(QueryFinished)
    async def _finished(self, message: QueryFinished) -> None:
        if message.query is not self.running:
            return  # a cancelled query that came back late
        self.running = None
        if message.error is not None:
            hint = ""
            if message.error.startswith("read-only"):
                hint = " — writes need write mode: ctrl+t"
            self._error(message.error + hint)
            self._status("failed" if not message.query.cancelled else "cancelled")
            return
        assert message.results
        self.last_sql = message.query.sql
        self.results = message.results
        self._tabs_made += 1  # tab ids of one query's results; the old tabs go asynchronously
        tabs = self.query_one("#result-tabs", Tabs)
        await tabs.clear()
        for i, r in enumerate(self.results):
            await tabs.add_tab(Tab(f"{r.statement} {_short(r.sql)}", id=self._tab_id(i)))
        tabs.set_class(len(self.results) > 1, "-shown")
        self._show(len(self.results) - 1)
        if len(self.results) > 1:
            tabs.active = self._tab_id(self.shown)

    def _tab_id(self, index: int) -> str:
        return f"result-{self._tabs_made}-{index}"

    @on(Tabs.TabActivated, "#result-tabs")
    def _tab(self, event: Tabs.TabActivated) -> None:
        prefix = self._tab_id(0)[:-1]
        if event.tab is not None and event.tab.id and event.tab.id.startswith(prefix):
            index = int(event.tab.id.removeprefix(prefix))
            if index != self.shown:
                self._show(index)

    def action_result(self, step: int) -> None:
        if len(self.results) > 1:
            self.query_one("#result-tabs", Tabs).active = self._tab_id(
                (self.shown + step) % len(self.results))

    def _show(self, index: int) -> None:
        self.shown = index
        result = self.results[index]
        table = self.query_one("#results", DataTable)
        table.clear(columns=True)
        for i, name in enumerate(result.columns):
            table.add_column(name, key=f"c{i}")
        for row in result.rows:
            table.add_row(*(_cell(v) for v in row))
        more = f" (first {ROW_LIMIT}; export writes all)" if result.truncated else ""
        took = "" if self.elapp.frozen else f" · {result.elapsed_s * 1000:.0f} ms"
        which = ""
        if result.statements > 1:
            which = (f"statement {result.statement} of {result.statements}"
                     + (f", result {index + 1} of {len(self.results)} (ctrl+pgup/pgdn)"
                        if len(self.results) > 1 else "") + ": ")
        self._status(f"{which}{len(result.rows)} row(s){more}{took}")

    def action_cancel(self) -> None:
        if self.running is None:
            editor = self.query_one("#editor", SqlEditor)
            # Escape leaves the editor (so 1-5 switch screens) and comes back to it.
            (self.query_one("#results", DataTable) if editor.has_focus else editor).focus()
            return
        query, self.running = self.running, None
        query.cancel()
        self._status("cancelled")
        self._error(None)

    # ------------------------------------------------------------------ history, modes

    def action_history(self, step: int) -> None:
        entries = self.history.entries
        if not entries:
            return
        pos = len(entries) if self.history_pos is None else self.history_pos
        pos = max(0, min(len(entries) - 1, pos + step))
        self.history_pos = pos
        self.query_one("#editor", SqlEditor).text = entries[pos]
        self._status(f"history {pos + 1}/{len(entries)}")

    def action_toggle_write(self) -> None:
        if not self.read_only:
            self.read_only = True
            self._status("back to read-only")
            return
        from efficientllm_tui.tui.screens.confirm import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok:
                self.read_only = False
                self._status("statements may now change the database (ctrl+t: read-only)")

        self.app.push_screen(
            ConfirmScreen(
                "Allow writes?",
                "Statements will be able to change or delete stored runs. The "
                "database is opened read-write for each query (an ingest waits meanwhile).",
                yes="Allow writes",
            ),
            done,
        )

    def action_focus_results(self) -> None:
        self.query_one("#results", DataTable).focus()

    def action_export(self) -> None:
        if self.last_sql is None:
            self.notify("run a query first; export writes its whole result", severity="warning")
            return
        sql = self.last_sql
        statement = self.results[self.shown].statement if self.results else None

        def done(path: Path | None) -> None:
            if path is not None:
                self.export(sql, path, statement)

        self.app.push_screen(ExportScreen(self.elapp.home / "export.csv"), done)

    @work(thread=True, exit_on_error=False, group="sql-export", name="export")
    def export(self, sql: str, path: Path, statement: int | None = None) -> None:
        n = export_query(self.elapp.store(), sql, path, read_only=True, statement=statement)
        self.app.call_from_thread(self.notify, f"wrote {n} row(s) to {path}", title="Export")


def _cell(value: Any) -> Text:
    """A grid cell: the value as `efficientllm sql` prints it, cut at 80 characters."""
    text = sql_cell(value)
    text = text if len(text) <= 80 else text[:79] + "…"
    return Text(text, style="dim italic" if value is None else "", no_wrap=True)


def _short(sql: str, width: int = 18) -> str:
    """A statement's first words, for its result tab."""
    flat = " ".join(sql.split()).rstrip(";")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


SCREEN = SqlScreen
