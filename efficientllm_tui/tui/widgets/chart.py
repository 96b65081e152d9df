"""Line/area charts on a braille grid (2x4 dots a cell) with a value axis and a time axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

_BRAILLE = 0x2800
# Dot bits by (column, row-from-top) inside one cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
SPARK = "▁▂▃▄▅▆▇█"
AREA_KEY = "█"
"""Legend mark of an area series."""
LINE_KEY = "━"
"""Legend mark of a line series."""


@dataclass(frozen=True)
class Series:
    """One line of a chart: points (x, y) with x ascending; y None is a gap."""

    label: str
    points: Sequence[tuple[float, float | None]]
    color: str
    area: bool = False


def braille_grid(
    series: Sequence[Series], cols: int, rows: int, x0: float, x1: float, y0: float, y1: float
) -> list[list[tuple[int, str | None]]]:
    """Rasterise series onto `rows` x `cols` cells: (dot bits, color of the last series)."""
    grid: list[list[tuple[int, str | None]]] = [[(0, None)] * cols for _ in range(rows)]
    if cols <= 0 or rows <= 0 or x1 <= x0:
        return grid
    w, h = cols * 2, rows * 4
    span_y = (y1 - y0) or 1.0
    for s in series:
        # One value per dot column: the max of the points falling in it (peaks stay visible).
        column: list[float | None] = [None] * w
        scale = (w - 1) / (x1 - x0)
        for x, y in s.points:
            if y is None or math.isnan(y) or x < x0 or x > x1:
                continue
            px = int((x - x0) * scale + 0.5)
            cur = column[px]
            column[px] = y if cur is None or y > cur else cur
        _fill_gaps(column, max_gap=max(2, 2 * w // max(1, len(s.points))))
        prev: int | None = None
        for px, y in enumerate(column):
            if y is None:
                prev = None
                continue
            py = int(max(0.0, min(1.0, (y - y0) / span_y)) * (h - 1) + 0.5)
            lo, hi = (
                (0, py)
                if s.area
                else ((min(prev, py), max(prev, py)) if prev is not None else (py, py))
            )
            for dot_y in range(lo, hi + 1):
                top = h - 1 - dot_y
                r, c = top // 4, px // 2
                bits, _ = grid[r][c]
                grid[r][c] = (bits | _DOTS[px % 2][top % 4], s.color)
            prev = py
    return grid


def _fill_gaps(column: list[float | None], max_gap: int) -> None:
    """Interpolate runs of empty dot columns no longer than `max_gap` between two values
    (sparser points than dots); longer runs stay empty (missing data shows as a gap)."""
    last: int | None = None
    for i, y in enumerate(column):
        if y is None:
            continue
        if last is not None and 1 < i - last <= max_gap + 1:
            a, b = column[last], y
            assert a is not None
            for j in range(last + 1, i):
                column[j] = a + (b - a) * (j - last) / (i - last)
        last = i


Run = tuple[str, str | None]
"""A stretch of text and its color (None: axis text, drawn dim)."""


def grid_rows(
    grid: list[list[tuple[int, str | None]]], left: list[str] | None = None
) -> list[list[Run]]:
    """Rows of (text, color) runs from a braille grid, with optional left axis labels."""
    rows: list[list[Run]] = []
    for i, row in enumerate(grid):
        runs: list[Run] = []
        if left is not None:
            runs.append((left[i], None))
        run_color: str | None = None
        chars: list[str] = []
        for bits, color in row:
            if color != run_color and chars:
                runs.append(("".join(chars), run_color or ""))
                chars = []
            run_color = color
            chars.append(chr(_BRAILLE + bits) if bits else " ")
        if chars:
            runs.append(("".join(chars), run_color or ""))
        rows.append(runs)
    return rows


def sparkline(
    values: Sequence[float | None], width: int, lo: float = 0.0, hi: float | None = None
) -> str:
    """Block sparkline of the last `width` values (gaps as spaces)."""
    vals = list(values)[-width:]
    known = [v for v in vals if v is not None]
    if not known:
        return " " * width
    top = hi if hi is not None else max(known)
    span = (top - lo) or 1.0
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        else:
            out.append(SPARK[max(0, min(7, int((v - lo) / span * 7 + 0.5)))])
    return "".join(out).rjust(width)


def nice_max(value: float) -> float:
    """A round upper bound at or above value (1, 2, 2.5, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def axis_label(value: float, width: int) -> str:
    if value >= 10_000:
        text = f"{value / 1000:.0f}k"
    elif value >= 100 or value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.2g}"
    return text[:width].rjust(width)


def time_label(seconds: float) -> str:
    s = abs(seconds)
    if s < 1:
        return "now"
    if s < 120:
        return f"-{s:.0f}s"
    if s < 7200:
        return f"-{s / 60:.0f}m"
    return f"-{s / 3600:.1f}h"


class TimeChart(Widget):
    """A chart of one or more series over a time window; the newest time is at the right.

    Call `plot()` with the data; `x` values are seconds relative to the window end (<= 0).
    """

    DEFAULT_CSS = """
    TimeChart { height: 1fr; min-height: 4; border: round $panel-lighten-2; padding: 0;
                text-wrap: nowrap; text-overflow: clip; }
    """

    def __init__(
        self,
        title: str,
        *,
        id: str | None = None,
        classes: str | None = None,
        y_max: float | None = None,
        x_axis: str = "time",
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self._title = title
        self._series: list[Series] = []
        self._x0, self._x1 = -60.0, 0.0
        self._y_max = y_max
        self._fixed_y = y_max
        self._x_axis = x_axis
        self._heading = title
        self._summary = ""
        self._strips: list[Strip] | None = None
        self._strips_key: tuple[int, int, Style] | None = None

    def plot(
        self,
        series: list[Series],
        x0: float,
        x1: float,
        *,
        summary: str = "",
        y_max: float | None = None,
        legend: bool = True,
        title: str | None = None,
    ) -> None:
        """Set the data and redraw (cheap: the raster is built at render time)."""
        if title is not None:
            self._title = title
        self._series = series
        self._x0, self._x1 = x0, x1
        self._y_max = y_max if y_max is not None else self._fixed_y
        heading = self._title
        if legend and len(series) > 1:
            # The key shows each series' shape (a filled block for an area, a dash for a
            # line), so series are told apart without colour too.
            heading += " " + " ".join(
                f"[{s.color}]{AREA_KEY if s.area else LINE_KEY}[/] {s.label}" for s in series
            )
        # Border labels are parsed markup: set them only when they change.
        if heading != self._heading:
            self._heading = self.border_title = heading
        if summary != self._summary:
            self._summary = self.border_subtitle = summary
        self._strips = None
        self.refresh()

    def rows(self, width: int, height: int) -> list[list[Run]]:
        """The chart as rows of (text, color) runs for a content area of width x height."""
        if width < 8 or height < 1:
            return [[("", None)] for _ in range(max(0, height))]
        show_x = height >= 3
        n_rows = height - (1 if show_x else 0)
        label_w = 5
        cols = max(1, width - label_w - 1)
        known = [y for s in self._series for _, y in s.points if y is not None]
        if not known:
            msg = "no data in this window"
            out: list[list[Run]] = [[("", None)] for _ in range(height)]
            out[min(height - 1, n_rows // 2)] = [(msg.center(width), None)]
            return out
        top = self._y_max if self._y_max is not None else nice_max(max(known))
        grid = braille_grid(self._series, cols, n_rows, self._x0, self._x1, 0.0, top)
        left = [" " * label_w + "│" for _ in range(n_rows)]
        left[0] = axis_label(top, label_w) + "┤"
        if n_rows >= 3:
            left[n_rows // 2] = axis_label(top / 2, label_w) + "┤"
        left[-1] = axis_label(0.0, label_w) + "┤"
        out = grid_rows(grid, left)
        if show_x:
            out.append([(self._x_axis_line(label_w, cols), None)])
        return out

    def text(self) -> str:
        """The chart as plain text at its current size (tests, logs)."""
        size = self.content_size
        return "\n".join("".join(t for t, _ in row) for row in self.rows(size.width, size.height))

    def render_line(self, y: int) -> Strip:
        # Line API: strips are built once per plot() and size, straight from segments
        # (no markup or Content conversion), which keeps 10 redraws a second cheap.
        size = self.content_size
        base = self.visual_style.rich_style
        key = (size.width, size.height, base)  # the theme is in the base style
        if self._strips is None or self._strips_key != key:
            dim = base + Style(dim=True)
            styles: dict[str | None, Style] = {None: dim, "": base}

            def style(color: str | None) -> Style:
                found = styles.get(color)
                if found is None:
                    found = styles[color] = base + Style.parse(color or "")
                return found

            self._strips = [
                Strip([Segment(t, style(c)) for t, c in row]).adjust_cell_length(size.width, base)
                for row in self.rows(size.width, size.height)
            ]
            self._strips_key = key
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(size.width, self.visual_style.rich_style)

    def _x_label(self, x: float) -> str:
        if self._x_axis == "time":
            return time_label(x)
        if self._x_axis == "elapsed":
            return f"{x:.0f}s" if x < 120 else f"{x / 60:.1f}m"
        return f"{self._x_axis} {x:.0f}"

    def _x_axis_line(self, label_w: int, cols: int) -> str:
        line = [" "] * cols
        mid = (self._x0 + self._x1) / 2
        label = self._x_label
        marks = [(0, label(self._x0)), (cols // 2, label(mid)), (cols - 1, label(self._x1))]
        for pos, text in marks:
            start = max(0, min(cols - len(text), pos - len(text) // 2))
            if pos == cols - 1:
                start = cols - len(text)
            for i, ch in enumerate(text):
                if 0 <= start + i < cols:
                    line[start + i] = ch
        return " " * (label_w + 1) + "".join(line)
