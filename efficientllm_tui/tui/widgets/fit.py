"""A table that shows whole columns only: too narrow, it drops the least telling ones first.

A DataTable wider than its widget scrolls sideways, so a narrow terminal shows a column cut
in the middle (`ST 2.0e-`, a run id `2026120`). FitTable keeps every row's full cells and
shows the columns that fit its width, chosen in the order of importance it is given; a
resize chooses again. A column never shows cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import DataTable

Column = tuple[str, str | Text]
"""(key, label) of a column."""


def cell_width(value: Any) -> int:
    """Cells a value takes in a DataTable (a str is markup there)."""
    if isinstance(value, Text):
        return max((Text(line).cell_len for line in value.plain.split("\n")), default=0)
    return Text.from_markup(value if isinstance(value, str) else str(value)).cell_len


def fit(widths: Sequence[int], order: Sequence[int], room: int, pad: int = 2) -> list[bool]:
    """Which columns to show: in `order` (most telling first), each one that still fits.

    Args:
        widths: Width of each column's widest cell or label.
        order: Column indexes, most telling first; indexes left out are never shown.
        room: Cells available for the columns.
        pad: Cells of padding each column takes (DataTable: one on each side).
    """
    shown = [False] * len(widths)
    left = room
    for i in order:
        need = widths[i] + pad
        if need <= left:
            shown[i] = True
            left -= need
    return shown


class FitTable(DataTable[Any]):
    """A DataTable over rows of full cells, showing the columns that fit (see module doc).

    Call `set_data` with every column and row; `set_cell` changes one cell. Columns are
    shown in their given order; `priority` (column keys, most telling first) picks them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._all_columns: list[Column] = []
        self._priority: list[str] = []
        self._full: dict[str, list[Any]] = {}
        self.shown: list[str] = []
        """Keys of the columns on screen, left to right."""

    def set_data(
        self,
        columns: Sequence[Column],
        rows: Mapping[str, Sequence[Any]],
        priority: Iterable[str] | None = None,
    ) -> None:
        """Show these rows (key -> one cell per column), keeping the cursor's row."""
        self._all_columns = list(columns)
        self._priority = list(priority) if priority is not None else [k for k, _ in columns]
        self._full = {key: list(cells) for key, cells in rows.items()}
        self._show()

    def set_cell(self, row: str, column: str, value: Any) -> None:
        """Change one cell (a hidden column keeps the value for when it shows)."""
        keys = [k for k, _ in self._all_columns]
        self._full[row][keys.index(column)] = value
        if column in self.shown and self.is_mounted:
            old = self.shown
            self._show()
            if self.shown == old:
                self.update_cell(row, column, value, update_width=True)

    def choose(self, width: int) -> list[str]:
        """Keys of the columns that fit `width` cells."""
        keys = [k for k, _ in self._all_columns]
        widths = [
            max([cell_width(label)] + [cell_width(r[i]) for r in self._full.values()])
            for i, (_, label) in enumerate(self._all_columns)
        ]
        order = [keys.index(k) for k in self._priority if k in keys]
        shown = fit(widths, order, width)
        return [k for k, on in zip(keys, shown, strict=True) if on]

    def _room(self) -> int:
        """Cells for columns: the content width, less a vertical scrollbar when rows overflow."""
        width = self.content_size.width
        if len(self._full) + (1 if self.show_header else 0) > self.content_size.height:
            width -= self.styles.scrollbar_size_vertical
        return width

    def _show(self) -> None:
        room = self._room()
        shown = self.choose(room) if room > 0 else [k for k, _ in self._all_columns]
        keys = [k for k, _ in self._all_columns]
        index = [keys.index(k) for k in shown]
        current = [str(k.value) for k in self.columns]
        rows = list(self._full)
        if shown == current and [str(k.value) for k in self.rows] == rows:
            for key, cells in self._full.items():
                old = self.get_row(key)
                for col, i, before in zip(shown, index, old, strict=True):
                    if cells[i] != before:
                        self.update_cell(key, col, cells[i], update_width=True)
            return
        at = None
        if self.row_count:
            at = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        column = self.cursor_coordinate.column
        if shown != current:
            self.clear(columns=True)
            for key, label in self._all_columns:
                if key in shown:
                    self.add_column(label, key=key)
            self.shown = shown
        else:
            self.clear()
        for key, cells in self._full.items():
            self.add_row(*(cells[i] for i in index), key=key)
        if at in self._full:
            self.move_cursor(row=rows.index(str(at)), column=column, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        if self._all_columns:
            self.call_after_refresh(self._refit)

    def _refit(self) -> None:
        if self._all_columns and self.choose(self._room()) != self.shown:
            self._show()
