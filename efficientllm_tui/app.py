"""The Textual app: a first screen listing stored runs (the full dashboard grows from here).

Never imports torch: runs are subprocesses. Slow work (DuckDB reads) happens in thread
workers that post results back, so the first frame never waits on the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from .errors import EfficientLLMError

RUN_COLUMNS = (("run_id", "run"), ("family", "family"), ("model", "model"),
               ("technique", "technique"), ("device", "device"), ("status", "status"),
               ("it", "IT tok/s"), ("st", "ST"), ("tt", "TT"), ("al_s", "AL s"),
               ("amu", "AMU"), ("aec_w", "AEC W"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class EfficientLLMApp(App[None]):
    """efficientllm: runs stored in the local DuckDB file."""

    TITLE = "efficientllm"
    CSS = """
    #empty { padding: 1 2; color: $text-muted; }
    DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("r", "refresh", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    @dataclass
    class RunsLoaded(Message):
        """Rows read from the store by a worker."""

        rows: list[dict[str, Any]]

    def __init__(self, db_path: Path, home: Path) -> None:
        super().__init__()
        self.db_path = db_path
        self.home = home

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading runs...", id="empty")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.db_path)
        table = self.query_one("#runs", DataTable)
        for key, label in RUN_COLUMNS:
            table.add_column(label, key=key)
        self.action_refresh()

    def action_refresh(self) -> None:
        self.load_runs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="store")
    def load_runs(self) -> None:
        from .store import Store

        from .ingest import recover

        store = Store(self.db_path, lock_timeout_s=2.0)
        try:
            # Runs that finished (or died) while no launcher watched them land first.
            recovered = recover(store, self.home)
            if recovered:
                self.call_from_thread(self.notify, f"ingested {len(recovered)} run dir(s)",
                                      title="Recovered")
            rows = store.list_runs(limit=500)
        except EfficientLLMError as e:
            self.call_from_thread(self.notify, str(e), title=e.title, severity="error")
            return
        self.post_message(self.RunsLoaded(rows))

    @on(RunsLoaded)
    def show_runs(self, message: RunsLoaded) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear()
        for row in message.rows:
            table.add_row(*(_cell(row.get(k)) for k, _ in RUN_COLUMNS), key=row["run_id"])
        empty = self.query_one("#empty", Static)
        if message.rows:
            empty.update(f"{len(message.rows)} runs  (r: refresh, q: quit)")
        else:
            empty.update("No runs stored yet. Start one from a shell: "
                         "efficientllm run -m tiny -t fp32 --device cpu")
