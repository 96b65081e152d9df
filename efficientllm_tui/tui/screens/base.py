"""What every screen shares: the navigation bar on top, the footer, app-wide signals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from efficientllm_tui.tui.app import EfficientLLMApp


class NavBar(Widget):
    """One line: the screens with their keys, the live feed state, and SIMULATED when it is."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; color: $text; text-wrap: nowrap;
             text-overflow: ellipsis; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def on_mount(self) -> None:
        self.watch(self.app, "feed_state", self._changed, init=False)
        self.watch(self.app, "simulated", self._changed, init=False)

    def _changed(self) -> None:
        self.refresh()

    def render(self) -> Text:
        from efficientllm_tui.tui.app import SCREENS_ORDER

        app = cast("EfficientLLMApp", self.app)
        narrow = self.size.width < 100
        out = Text(no_wrap=True, overflow="ellipsis")
        if not narrow:
            out.append(" efficientllm ", style="bold")
        for i, (name, label) in enumerate(SCREENS_ORDER, 1):
            text = f" {i} {label} "
            if name == self.current:
                out.append(text, style="bold reverse")
            else:
                out.append(text, style="dim" if not narrow else "")
        out.append("  ")
        state = app.feed_state
        if state.connected:
            out.append("● live", style="green")
        elif state.detail:
            out.append("○ no daemon", style="yellow")
        else:
            out.append("○ connecting", style="dim")
        if app.simulated:
            out.append("  ")
            out.append(" SIMULATED ", style="bold black on yellow")
        return out


class AppFooter(Footer):
    """The footer with `q Quit` first: a narrow terminal cuts keys at the right end, and
    the way out must never be the one cut."""

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        first = None
        for _, binding, enabled, tooltip in self.screen.active_bindings.values():
            if binding.action == "quit" and binding.show:
                first = FooterKey(
                    binding.key,
                    self.app.get_key_display(binding),
                    binding.description,
                    binding.action,
                    disabled=not enabled,
                    tooltip=tooltip,
                ).data_bind(compact=Footer.compact)
                yield first
                break
        for widget in super().compose():  # one at a time: key groups compose their keys
            if first is not None and isinstance(widget, FooterKey) and widget.action == "quit":
                continue
            yield widget

    async def recompose(self) -> None:
        await super().recompose()
        self.call_after_refresh(self._fit)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        """Hide the keys that would be cut at the right end (whole keys only)."""
        items = [w for w in self.children if not w.has_class("-command-palette")]
        palette = sum(
            w.outer_size.width for w in self.children if w.has_class("-command-palette")
        )
        room = self.size.width - palette
        used = 0
        for widget in items:
            if not widget.display:
                widget.display = True
                self.call_after_refresh(self._fit)  # measure it first
                return
        units: list[list[Widget]] = []
        for widget in items:  # a key group and its label go together
            if units and isinstance(widget, FooterLabel) and isinstance(units[-1][0], KeyGroup):
                units[-1].append(widget)
            else:
                units.append([widget])
        for unit in units:
            used += sum(w.outer_size.width + w.styles.margin.width for w in unit)
            for widget in unit:
                widget.display = used <= room


class AppScreen(Screen[None]):
    """A screen of the app: NavBar + body + Footer; reloads when stored runs change."""

    NAME = ""
    """The mode name (dashboard, launch, runs, compare, sql)."""

    def __init__(self) -> None:
        super().__init__()
        self._runs_seen = -1

    @property
    def elapp(self) -> EfficientLLMApp:
        return cast("EfficientLLMApp", self.app)

    def compose(self) -> ComposeResult:
        yield NavBar(self.NAME)
        yield from self.compose_body()
        yield AppFooter(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        app = self.elapp
        # A hidden screen may have lost its subscriptions: make them afresh.
        app.runs_changed.unsubscribe(self)
        app.runs_changed.subscribe(self, self._runs_signal)
        app.recent_changed.unsubscribe(self)
        app.recent_changed.subscribe(self, self.recent_changed)
        if self._runs_seen != app.runs_version:
            self._runs_signal(None)
        self.resumed()

    def _runs_signal(self, _: Any) -> None:
        self._runs_seen = self.elapp.runs_version
        self.runs_changed()

    @property
    def pending(self) -> bool:
        """True while data this screen asked for has not been shown yet."""
        return False

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # The app turns the error into a notification (the event bubbles on to it); the
        # screen only stops waiting for what will never come.
        if event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self.load_failed(event.worker)

    def load_failed(self, worker: Worker[Any]) -> None:
        """A worker of this screen failed or was cancelled: show that, stop waiting."""

    def runs_changed(self) -> None:
        """Stored runs changed (or this screen shows them for the first time)."""

    def recent_changed(self, rows: list[dict[str, Any]]) -> None:
        """The newest stored runs were (re)loaded."""

    def resumed(self) -> None:
        """The screen became current."""
