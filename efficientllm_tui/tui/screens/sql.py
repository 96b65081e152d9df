"""SQL console: an editor over the DuckDB file, read-only unless writes are switched on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Static, TextArea

from efficientllm_tui.display import num
from efficientllm_tui.errors import EfficientLLMError
from efficientllm_tui.store.console import (
    HISTORY_FILE,
    ConsoleQuery,
    ConsoleResult,
    SqlHistory,
    export_query,
)
from efficientllm_tui.tui.screens.base import AppScreen

ROW_LIMIT = 1000
STARTER = (
    "SELECT technique, model, status, it, al_s, amu, aec_w\n"
    "FROM run_metrics ORDER BY started_at DESC LIMIT 20"
)


@dataclass
class QueryFinished(Message):
    """A console query ended: a result, or the error to show under the editor."""

    query: ConsoleQuery
    result: ConsoleResult | None = None
    error: str | None = None


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
    """Editor on top, results below; ctrl+enter (or ctrl+r) runs, escape cancels."""

    NAME = "sql"
    BINDINGS = [
        Binding("ctrl+enter,ctrl+r", "run", "Run", priority=True),
        Binding("escape", "cancel", "Cancel/leave", priority=True),
        Binding("ctrl+up", "history(-1)", "Prev", priority=True),
        Binding("ctrl+down", "history(1)", "Next", priority=True),
        Binding("ctrl+s", "export", "Export", priority=True),
        Binding("ctrl+t", "toggle_write", "Write mode", priority=True),
        Binding("ctrl+l", "focus_results", "Results", show=False, priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history = SqlHistory(Path("/nonexistent"))
        self.history_pos: int | None = None
        self.read_only = True
        self.running: ConsoleQuery | None = None
        self.last_sql: str | None = None

    def compose_body(self) -> ComposeResult:
        yield TextArea(
            STARTER, id="editor", soft_wrap=True, show_line_numbers=False, tab_behavior="indent"
        )
        yield Static(id="sql-status")
        yield Static(id="sql-error")
        yield DataTable(id="results", zebra_stripes=True)

    def on_mount(self) -> None:
        self.history = SqlHistory(self.elapp.home / HISTORY_FILE).load()
        editor = self.query_one("#editor", TextArea)
        editor.border_title = "SQL · DuckDB"
        if self.history.entries:
            editor.text = self.history.entries[-1]
        editor.focus()
        self._status(
            "ctrl+enter or ctrl+r runs · tables: runs samples steps windows events "
            "metrics · views: run_metrics leaderboard · F1-F5 switch screens"
        )

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
        return self.running is not None

    def action_run(self) -> None:
        sql = self.query_one("#editor", TextArea).text.strip()
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
            result = query.run(limit=ROW_LIMIT)
        except EfficientLLMError as e:
            self.post_message(QueryFinished(query, error=str(e)))
            return
        self.post_message(QueryFinished(query, result=result))

    @on(QueryFinished)
    def _finished(self, message: QueryFinished) -> None:
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
        result = message.result
        assert result is not None
        self.last_sql = message.query.sql
        self._show(result)

    def _show(self, result: ConsoleResult) -> None:
        table = self.query_one("#results", DataTable)
        table.clear(columns=True)
        for i, name in enumerate(result.columns):
            table.add_column(name, key=f"c{i}")
        for row in result.rows:
            table.add_row(*(_cell(v) for v in row))
        more = f" (first {ROW_LIMIT}; export writes all)" if result.truncated else ""
        took = "" if self.elapp.frozen else f" · {result.elapsed_s * 1000:.0f} ms"
        self._status(f"{len(result.rows)} row(s){more}{took}")

    def action_cancel(self) -> None:
        if self.running is None:
            editor = self.query_one("#editor", TextArea)
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
        self.query_one("#editor", TextArea).text = entries[pos]
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

        def done(path: Path | None) -> None:
            if path is not None:
                self.export(sql, path)

        self.app.push_screen(ExportScreen(self.elapp.home / "export.csv"), done)

    @work(thread=True, exit_on_error=False, group="sql-export", name="export")
    def export(self, sql: str, path: Path) -> None:
        n = export_query(self.elapp.store(), sql, path, read_only=True)
        self.app.call_from_thread(self.notify, f"wrote {n} row(s) to {path}", title="Export")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return num(value)
    if value is None:
        return "NULL"
    text = str(value)
    return text if len(text) <= 80 else text[:79] + "…"


SCREEN = SqlScreen
