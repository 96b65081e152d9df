"""The SQL console's editor: DuckDB SQL highlighted, table and column names completed."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from efficientllm_tui.store.console import SchemaTable, completions


class SqlEditor(TextArea):
    """A TextArea for SQL: `tab` after a name's first letters (or `ctrl+space` anywhere)
    completes it from the schema; `ctrl+a` selects all, as in most editors."""

    BINDINGS = [
        Binding("ctrl+a", "select_all", "Select all", show=False),
        Binding("ctrl+space,ctrl+@", "complete", "Complete", show=False),
    ]

    @dataclass
    class Hint(Message):
        """What completing would give at the cursor now (`names` empty: nothing)."""

        editor: SqlEditor
        names: list[str]

    def __init__(self, text: str = "", **kwargs: object) -> None:
        super().__init__(text, soft_wrap=True, show_line_numbers=False, tab_behavior="indent",
                         **kwargs)  # type: ignore[arg-type]
        self.schema: list[SchemaTable] = []
        self._hinted: list[str] = []

    def on_mount(self) -> None:
        # Highlighting needs tree-sitter and its SQL grammar (pinned dependencies); without
        # them the editor still works, in plain text.
        if "sql" in self.available_languages:
            self.language = "sql"

    def _before_cursor(self) -> str:
        row, col = self.cursor_location
        return self.document.get_line(row)[:col]

    def completion(self) -> tuple[str, list[str]]:
        """(text `complete` would insert, every name that fits the word at the cursor)."""
        if self.selected_text:
            return "", []
        return completions(self._before_cursor(), self.schema)

    def action_complete(self) -> None:
        insert, names = self.completion()
        if insert:
            self.insert(insert)
        self._hint(names if len(names) > 1 or not insert else [])

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "tab" and not self.read_only:
            insert, names = self.completion()
            if names:  # a name is being typed: complete it rather than indent
                event.stop()
                event.prevent_default()
                if insert:
                    self.insert(insert)
                self._hint(names if len(names) > 1 or not insert else [])
                return
        await super()._on_key(event)

    def _on_text_area_changed(self) -> None:
        self._hint(self.completion()[1])

    def _hint(self, names: list[str]) -> None:
        if names != self._hinted:
            self._hinted = names
            self.post_message(self.Hint(self, names))
