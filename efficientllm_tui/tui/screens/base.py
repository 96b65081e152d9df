"""What every screen shares: the navigation bar on top, the footer, app-wide signals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
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
        yield Footer(compact=True)

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
