"""Horizontal bar charts with eighth-block resolution, one bar per item."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class Bar:
    """One bar: label, value (None: not measured) and its color."""

    label: str
    value: float | None
    color: str
    note: str = ""
    """Short text after the value (a rank, a score)."""


def bar_line(fraction: float, width: int) -> str:
    """A bar `width` cells long at full scale, with eighth-cell resolution."""
    fraction = max(0.0, min(1.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    out = "█" * full + (_EIGHTHS[part] if part else "")
    return out.ljust(width)


def render_bars(
    bars: Sequence[Bar],
    width: int,
    fmt: Callable[[float | None], str] = lambda v: "-" if v is None else f"{v:.4g}",
) -> Text:
    """Bars scaled to the largest value; label column and value column sized to fit."""
    if not bars:
        return Text("nothing to show", style="dim")
    label_w = min(max(len(b.label) for b in bars), max(6, width // 3))
    values = [fmt(b.value) + (f" {b.note}" if b.note else "") for b in bars]
    value_w = max(len(v) for v in values)
    bar_w = max(4, width - label_w - value_w - 3)
    top = max((b.value for b in bars if b.value is not None), default=0.0) or 1.0
    out = Text(no_wrap=True, overflow="crop")
    for i, (b, val) in enumerate(zip(bars, values, strict=True)):
        if i:
            out.append("\n")
        out.append(b.label[:label_w].ljust(label_w) + " ")
        if b.value is None:
            out.append("not measured".ljust(bar_w), style="dim")
        else:
            out.append(bar_line(b.value / top, bar_w), style=b.color)
        out.append(" " + val.rjust(value_w))
    return out


class BarChart(Widget):
    """A titled bar chart; `update_bars` replaces the data."""

    DEFAULT_CSS = """
    BarChart { height: auto; border: round $panel-lighten-2; text-wrap: nowrap;
               text-overflow: clip; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self._bars: list[Bar] = []
        self._fmt: Callable[[float | None], str] | None = None

    def update_bars(
        self, bars: list[Bar], fmt: Callable[[float | None], str] | None = None, subtitle: str = ""
    ) -> None:
        self._bars = bars
        self._fmt = fmt
        self.border_subtitle = subtitle
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return max(1, len(self._bars))

    def render(self) -> Text:
        width = self.content_size.width
        if self._fmt is None:
            return render_bars(self._bars, width)
        return render_bars(self._bars, width, self._fmt)
