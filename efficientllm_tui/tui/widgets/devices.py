"""The device list of the dashboard: one line a device with its latest readings."""

from __future__ import annotations

import os
from itertools import islice
from typing import TYPE_CHECKING

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from efficientllm_tui.display import gib, pct
from efficientllm_tui.live.history import SampleHistory, source_label
from efficientllm_tui.tui.widgets.bars import bar_line
from efficientllm_tui.tui.widgets.chart import sparkline

if TYPE_CHECKING:
    from profiling.sample import Sample


class DeviceList(Widget, can_focus=True):
    """Devices (GPUs, then the host) with memory, activity, power, clock, temperature.

    Up/down move the selection; the dashboard charts the selected device.
    """

    DEFAULT_CSS = """
    DeviceList { height: auto; max-height: 10; border: round $panel-lighten-2; padding: 0 1;
                 text-wrap: nowrap; text-overflow: clip; }
    DeviceList:focus { border: round $accent; }
    """
    BINDINGS = [
        Binding("up,k", "move(-1)", "Prev device", show=False),
        Binding("down,j", "move(1)", "Next device", show=False),
    ]

    cursor: reactive[int] = reactive(0)

    class Selected(Message):
        """The selected device changed."""

        def __init__(self, device: str) -> None:
            super().__init__()
            self.device = device

    def __init__(self, history: SampleHistory, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history
        self.devices: list[str] = []
        self.border_title = "devices"
        self._ncpu = os.cpu_count() or 1
        self._strips: list[Strip] | None = None
        self._strips_key: tuple[object, ...] | None = None

    @property
    def selected(self) -> str | None:
        return self.devices[self.cursor] if self.devices else None

    def update_devices(self) -> None:
        names = self.history.device_names()
        if names != self.devices:
            current = self.selected
            self.devices = names
            if current in names:
                self.cursor = names.index(current)
            self._strips = None
            self.refresh(layout=True)
            if current is None and names:
                self.post_message(self.Selected(names[self.cursor]))
        else:
            self.refresh()

    def watch_cursor(self) -> None:
        self.refresh()

    def action_move(self, delta: int) -> None:
        if not self.devices:
            return
        self.cursor = (self.cursor + delta) % len(self.devices)
        self.post_message(self.Selected(self.devices[self.cursor]))

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return max(1, len(self.devices))

    def lines(self) -> list[Text]:
        """The visible lines (more devices than lines: the selected one stays in view)."""
        if not self.devices:
            return [Text("no samples yet", style="dim")]
        width, height = self.content_size.width, max(1, self.content_size.height)
        first = max(0, min(self.cursor - height // 2, len(self.devices) - height))
        return [
            self._line(name, self.history.latest(name), i == self.cursor, width)
            for i, name in enumerate(self.devices[first : first + height], first)
        ]

    def render_line(self, y: int) -> Strip:
        # Line API: the lines are built once per redraw and turned into strips directly.
        size = self.content_size
        base = self.visual_style.rich_style
        key = (self.history.version, self.cursor, tuple(self.devices), size, base)
        if self._strips is None or self._strips_key != key:
            console = self.app.console
            self._strips = [
                Strip(list(line.render(console)))
                .apply_style(base)
                .adjust_cell_length(size.width, base)
                for line in self.lines()
            ]
            self._strips_key = key
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(size.width, base)

    def _line(self, name: str, s: Sample | None, selected: bool, width: int) -> Text:
        line = Text(no_wrap=True, overflow="crop")
        line.append("▶ " if selected else "  ", style="bold")
        line.append(f"{name:<5}", style="bold" if selected else "")
        src = source_label(s)
        if src == "simulated":
            line.append(" ")
            line.append(" SIM ", style="bold black on yellow")
            line.append(" ")
        else:
            line.append(f" {src[:6]:<6} ", style="dim")
        if s is None:
            return line
        used, total = s.mem_used_bytes, s.mem_total_bytes
        frac = (used / total) if used is not None and total else None
        line.append(bar_line(frac or 0.0, 6), style="cyan")
        line.append(f" {gib(used):>5}/{gib(total)}G")
        if name == "cpu":
            line.append(f" CPU {pct(s.util_pct):>4}")
            if s.cpu_pct is not None:
                line.append(f" runner {s.cpu_pct / self._ncpu:.0f}%")
            if s.power_w is not None:
                line.append(f" {s.power_w:.0f}W")
        else:
            act = s.sm_active_pct if s.sm_active_pct is not None else s.util_pct
            line.append(f" {'SM' if s.sm_active_pct is not None else 'util'} {pct(act):>4}")
            if s.tensor_active_pct is not None:
                line.append(f" TC {pct(s.tensor_active_pct):>4}")
            if s.power_w is not None:
                line.append(f" {s.power_w:>4.0f}W")
            if s.sm_clock_mhz is not None:
                line.append(f" {s.sm_clock_mhz:>4.0f}MHz")
            if s.temp_c is not None:
                line.append(f" {s.temp_c:>3.0f}°C")
        room = width - line.cell_len - 2
        if room >= 8:
            series = self.history.devices.get(name)
            if series is not None:
                recent = list(islice(reversed(series.fine), room * 2))[::-2]
                vals = [
                    (r.sm_active_pct if r.sm_active_pct is not None else r.util_pct) for r in recent
                ]
                line.append("  " + sparkline(vals, room, 0.0, 100.0), style="green")
        return line
