"""A scatter plot of labelled points on a character grid (one marker a point)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget


@dataclass(frozen=True)
class Point:
    """A point with its one-character marker (legend key) and color."""

    marker: str
    label: str
    x: float | None
    y: float | None
    color: str


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def render_scatter(
    points: Sequence[Point], width: int, height: int, x_label: str, y_label: str
) -> Text:
    """Plot area with min/max ticks on both axes; points without both values are listed."""
    usable = [p for p in points if p.x is not None and p.y is not None]
    if width < 16 or height < 4:
        return Text("too small", style="dim")
    if not usable:
        return Text(f"no run has both {x_label} and {y_label}", style="dim")
    xs = [p.x for p in usable if p.x is not None]
    ys = [p.y for p in usable if p.y is not None]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    # Pad equal bounds so a single run (or ties) sits in the middle.
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - (abs(x_lo) or 1) * 0.5, x_hi + (abs(x_hi) or 1) * 0.5
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - (abs(y_lo) or 1) * 0.5, y_hi + (abs(y_hi) or 1) * 0.5
    label_w = max(len(_fmt(y_hi)), len(_fmt(y_lo)), 4)
    cols = width - label_w - 1
    rows = height - 2
    grid: list[list[tuple[str, str]]] = [[(" ", "")] * cols for _ in range(rows)]
    for p in usable:
        assert p.x is not None and p.y is not None
        c = int((p.x - x_lo) / (x_hi - x_lo) * (cols - 1) + 0.5)
        r = rows - 1 - int((p.y - y_lo) / (y_hi - y_lo) * (rows - 1) + 0.5)
        old = grid[r][c][0]
        grid[r][c] = ("+" if old not in (" ", p.marker) else p.marker, p.color)
    out = Text(no_wrap=True, overflow="crop")
    for i, row in enumerate(grid):
        if i:
            out.append("\n")
        tick = _fmt(y_hi) if i == 0 else _fmt(y_lo) if i == rows - 1 else ""
        out.append(tick.rjust(label_w) + ("┤" if tick else "│"), style="dim")
        for ch, color in row:
            out.append(ch, style=f"bold {color}" if ch != " " else "")
    out.append("\n" + " " * label_w + "└" + "─" * cols, style="dim")
    lo, hi = _fmt(x_lo), _fmt(x_hi)
    mid = f" {x_label} → "
    gap = max(1, cols - len(lo) - len(hi) - len(mid))
    out.append(
        "\n" + " " * (label_w + 1) + lo + " " * (gap // 2) + mid + " " * (gap - gap // 2) + hi,
        style="dim",
    )
    return out


class ScatterPlot(Widget):
    """A titled scatter plot; `update_points` replaces the data and the axis names."""

    DEFAULT_CSS = """
    ScatterPlot { height: 1fr; min-height: 8; border: round $panel-lighten-2;
                  text-wrap: nowrap; text-overflow: clip; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._points: list[Point] = []
        self._x_label = self._y_label = ""

    def update_points(self, points: list[Point], x_label: str, y_label: str) -> None:
        self._points = points
        self._x_label, self._y_label = x_label, y_label
        self.border_title = f"trade-off: {y_label} (up) vs {x_label} (right)"
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        return render_scatter(self._points, size.width, size.height, self._x_label, self._y_label)
