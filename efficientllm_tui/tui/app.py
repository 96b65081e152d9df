"""The Textual app: five screens (dashboard, launch, runs, compare, SQL) over shared live state.

Never imports torch: runs are subprocesses. The first frame waits on nothing: the database,
the daemon and the run dirs are read by thread workers that post messages back. Live samples
go into per-device rings held here (`history`), so every screen sees the same data and a
slow redraw drops frames, never samples. Every worker error reaches one handler
(`on_worker_state_changed`) and becomes a notification that says what to do.

Runs are never started or stored here: the app enqueues them on disk and the per-host
dispatcher starts and stores them (DESIGN.md section 3). The queue is read back every second
(`queued`), so runs queued elsewhere show too, and quitting the app drops nothing.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events, on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.signal import Signal
from textual.worker import Worker, WorkerState, get_current_worker

from efficientllm_tui.errors import EfficientLLMError
from efficientllm_tui.live.feed import (
    FeedState,
    SampleSource,
    daemon_source,
    oldest_active_start_ns,
    pump,
)
from efficientllm_tui.live.history import SampleHistory
from efficientllm_tui.runs.tracker import ActiveRun, RunWatcher
from efficientllm_tui.tui.messages import (
    FeedChanged,
    QueueChanged,
    RecentRunsLoaded,
    RunIngested,
    RunsWatched,
    SamplesArrived,
    StoreChanged,
)
from efficientllm_tui.tui.palette import binding_commands

if TYPE_CHECKING:
    from efficientllm_tui.runs.queue import QueueRow
    from efficientllm_tui.store.db import Store
    from profiling.sample import Sample
    from runners.protocol import RunSpec

SCREENS_ORDER = (
    ("dashboard", "Dashboard"),
    ("launch", "Launch"),
    ("runs", "Runs"),
    ("compare", "Compare"),
    ("sql", "SQL"),
    ("study", "Study"),
)
REPLAY_S = 600.0
"""Seconds of daemon history asked for at start (its ring keeps ten minutes by default)."""
QUEUE_POLL_S = 1.0
"""How often the queue on disk is read back (sooner after a launch or a stop)."""
ENSURE_EVERY_S = 5.0
"""While runs wait, how often the app makes sure a dispatcher runs (one may have been killed)."""
STORED_POLL_S = 0.2
STORED_WAIT_S = 60.0
"""How long the app waits for the dispatcher to store an ended run before it says so."""
FIRST_FRAME_WAIT_S = 2.0
"""Longest a start-up worker waits for the first frame to be painted before it begins."""
_NAV = Binding.Group("screens")


def _mode(name: str) -> Callable[[], Screen[Any]]:
    """A mode's screen factory that imports its module on first use (fast first frame)."""

    def make() -> Screen[Any]:
        module = importlib.import_module(f"efficientllm_tui.tui.screens.{name}")
        return module.SCREEN()  # type: ignore[no-any-return]

    return make


class EfficientLLMApp(App[None]):
    """efficientllm: live profiling, launching, run history, comparisons and SQL.

    Args:
        db_path: The DuckDB file.
        home: The data dir (run dirs, spool, daemon socket, SQL history).
        sample_source: Where live samples come from; the profiling daemon of `home` by
            default. Tests and benchmarks pass a fake (feed.SyntheticFeed).
        clock: Wall clock in ns (time.time_ns); tests freeze it so screens are repeatable.
        frozen: Deterministic rendering for snapshots: no cursor blink.
        watch_runs: Tail run dirs for active runs.
        recover: Ingest run dirs that finished unseen, at start (waiting runs are left to
            the dispatcher).
        lock_timeout_s: How long a database open waits for another process's lock.
        start_mode: The screen to open on (dashboard by default).
        catalog: The model/technique catalog for the Launch matrix (tests pin one).
    """

    TITLE = "efficientllm"
    CSS_PATH = Path(__file__).with_name("app.tcss")
    MODES = {name: _mode(name) for name, _ in SCREENS_ORDER}
    DEFAULT_MODE = "dashboard"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        *(
            Binding(str(i), f"show('{name}')", label, group=_NAV)
            for i, (name, label) in enumerate(SCREENS_ORDER, 1)
        ),
        *(
            Binding(f"f{i}", f"show('{name}')", label, show=False, priority=True)
            for i, (name, label) in enumerate(SCREENS_ORDER, 1)
        ),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    feed_state: reactive[FeedState] = reactive(FeedState(False, ""))
    """The live feed: connected, or why not ("" until the first attempt ends)."""
    simulated: reactive[bool] = reactive(False)

    def __init__(
        self,
        db_path: Path,
        home: Path,
        *,
        sample_source: SampleSource | None = None,
        clock: Callable[[], int] | None = None,
        frozen: bool = False,
        watch_runs: bool = True,
        recover: bool = True,
        lock_timeout_s: float = 5.0,
        start_mode: str | None = None,
        catalog: dict[str, Any] | None = None,
    ) -> None:
        if start_mode is not None:
            if start_mode not in self.MODES:
                raise ValueError(f"unknown screen {start_mode!r}")
            self.DEFAULT_MODE = start_mode  # type: ignore[misc]  # App.__init__ reads it
        super().__init__()
        self.db_path = Path(db_path)
        self.home = Path(home)
        self.sample_source = sample_source or daemon_source(self.home)
        self.clock = clock or time.time_ns
        self.frozen = frozen
        self.lock_timeout_s = lock_timeout_s
        self.catalog = catalog
        """Models and techniques offered on Launch (None: the shipped catalog)."""
        self.history = SampleHistory()
        self.active: dict[str, ActiveRun] = {}
        self.queued: list[QueueRow] = []
        """Running and waiting runs of the queue on disk, per device (queue.snapshot)."""
        self.marked: set[str] = set()
        self.recent: list[dict[str, Any]] | None = None
        self.watcher = RunWatcher(self.home)
        self._watch_runs = watch_runs
        self._recover = recover
        self._stopping = threading.Event()
        self._painted = threading.Event()
        """Set once the first frame is painted: start-up workers (samples, run dirs, queue,
        store) wait for it, so the first paint shares the cores and the GIL with nothing."""
        self._queue_poke = threading.Event()
        self.redraws = 0
        """Dashboard redraws so far (the benchmark reads it)."""
        self.runs_version = 0
        """Grows whenever stored runs change; screens compare it on resume."""
        self.runs_changed: Signal[None] = Signal(self, "runs-changed")
        """Published when stored runs were added or deleted (screens reload)."""
        self.recent_changed: Signal[list[dict[str, Any]]] = Signal(self, "recent-changed")
        """Published with the newest stored runs."""

    # ------------------------------------------------------------------ life cycle

    def on_mount(self) -> None:
        self.sub_title = str(self.db_path)
        self.call_after_refresh(self._painted.set)
        self.stream_samples()
        if self._watch_runs:
            self.watch_run_dirs()
        self.watch_queue()
        self.startup_store()

    def on_unmount(self) -> None:
        self._stopping.set()
        self._painted.set()
        self._queue_poke.set()

    def now_ns(self) -> int:
        return self.clock()

    def _after_first_frame(self) -> bool:
        """In a worker: wait until the first frame is painted; False if the app is closing."""
        self._painted.wait(FIRST_FRAME_WAIT_S)
        return not self._stopping.is_set()

    def store(self) -> Store:
        """A Store for this app's file (imported lazily: DuckDB is not needed for frame 1)."""
        from efficientllm_tui.store.db import Store

        return Store(self.db_path, lock_timeout_s=self.lock_timeout_s)

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    async def action_quit(self) -> None:
        """Quit at once: the queue is on disk, so queued and running runs go on without
        the app (the terminal is told so after the app closes)."""
        waiting = sum(1 for r in self.queued if r.state == "waiting")
        running = sum(1 for r in self.queued if r.state == "running")
        message = None
        if waiting or running:
            message = (
                f"efficientllm: {running} running and {waiting} queued run(s) go on without "
                "the app; `efficientllm queue` lists them."
            )
        self.exit(message=message)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, label in SCREENS_ORDER:
            yield SystemCommand(
                f"Go to {label}", f"Switch to the {label} screen", partial(self.action_show, name)
            )
        yield SystemCommand(
            "Toggle dark/light", "Switch between the dark and light theme", self.toggle_dark
        )
        yield from binding_commands(self, screen, dict(SCREENS_ORDER))

    def toggle_dark(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    @on(events.DescendantFocus)
    def _freeze_cursor(self, event: events.DescendantFocus) -> None:
        if self.frozen and hasattr(event.widget, "cursor_blink"):
            event.widget.cursor_blink = False  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ errors

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures become notifications (never a traceback)."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.report_error(event.worker.error, event.worker.name)

    def report_error(self, error: BaseException, where: str = "") -> None:
        """Tell the user about a failure: what happened and what to do."""
        from efficientllm_tui.tui.notices import error_notice

        n = error_notice(error, where, self.home)
        self.notify(n.message, title=n.title, severity=n.severity, timeout=n.timeout_s)

    # ------------------------------------------------------------------ live samples

    @work(thread=True, exit_on_error=False, group="samples", name="sample feed")
    def stream_samples(self) -> None:
        worker = get_current_worker()
        if not self._after_first_frame():
            return
        since = self.now_ns() - int(REPLAY_S * 1e9)
        oldest = oldest_active_start_ns(self.home)
        if oldest is not None:
            since = min(since, oldest)  # reattach: the whole history of every live run

        def on_batch(batch: list[Sample]) -> None:
            self.post_message(SamplesArrived(batch))

        def on_state(state: FeedState) -> None:
            self.post_message(FeedChanged(state.connected, state.detail))

        pump(
            self.sample_source,
            since,
            on_batch=on_batch,
            on_state=on_state,
            stopped=lambda: worker.is_cancelled or self._stopping.is_set(),
        )

    @on(SamplesArrived)
    def _take_samples(self, message: SamplesArrived) -> None:
        if self.history.extend(message.samples):
            hook = getattr(self.screen, "samples_arrived", None) if self.screen_stack else None
            if callable(hook):
                hook()
        if self.history.simulated and not self.simulated:
            self.simulated = True

    @on(FeedChanged)
    def _feed_changed(self, message: FeedChanged) -> None:
        if self.feed_state.connected and not message.connected:
            self.notify(
                f"Lost the profiling daemon ({message.detail}). The graphs pause; "
                "start it again with `efficientllm daemon start` (retrying).",
                title="Profiling daemon",
                severity="warning",
                timeout=8,
            )
        self.feed_state = FeedState(message.connected, message.detail)

    # ------------------------------------------------------------------ active runs

    @work(thread=True, exit_on_error=False, group="runs", name="run watcher")
    def watch_run_dirs(self) -> None:
        worker = get_current_worker()
        self._after_first_frame()
        while not (worker.is_cancelled or self._stopping.is_set()):
            update = self.watcher.poll()
            if update:
                self.post_message(RunsWatched(update))
            self._stopping.wait(0.5)

    @on(RunsWatched)
    def _runs_watched(self, message: RunsWatched) -> None:
        update = message.update
        for run_dir, spec in update.new:
            run = ActiveRun.from_dir(run_dir, spec)
            self.active.setdefault(run.run_id, run)
        for run_id, evs in update.events.items():
            tracked = self.active.get(run_id)
            if tracked is not None:
                for ev in evs:
                    tracked.apply(ev)
        for run_id in update.ended:
            ended = self.active.pop(run_id, None)
            self.await_stored(run_id, ended.error if ended else None)
        if update.new or update.ended:
            self._queue_poke.set()

    @work(thread=True, exit_on_error=False, group="stored", name="await stored")
    def await_stored(self, run_id: str, error: str | None = None) -> None:
        """Wait until the dispatcher has stored an ended run, then let the screens know.

        The app never stores a run itself: exactly one process does (the dispatcher). A
        database held locked by another program delays that; after STORED_WAIT_S the user
        is told the run waits safely in its run dir.
        """
        from efficientllm_tui.runs import fold, follow, rundir
        from profiling import home as homes

        status = follow.wait_stored(self.home, run_id, STORED_WAIT_S, stop=self._stopping,
                                    poll_s=STORED_POLL_S, ensure=self.ensure_dispatcher,
                                    ensure_after_s=2 * STORED_POLL_S,
                                    ensure_every_s=ENSURE_EVERY_S)
        run_dir = homes.runs_dir(self.home) / run_id
        if status is not None:
            end = fold.ending(rundir.read_events(run_dir)[0]) if error is None else None
            if end is not None and end.error_text:  # ended unseen: why, as ingest read it
                error = f"{end.error_type}: {end.error_text}" if end.error_type \
                    else end.error_text
            self.post_message(RunIngested(run_id, status, error))
        elif not run_dir.is_dir():
            self.post_message(StoreChanged())  # deleted meanwhile
        elif not self._stopping.is_set():
            self.call_from_thread(
                self.notify,
                f"{run_id} ended but is not stored yet (is another program holding the "
                "database?). It is safe in its run dir; the dispatcher stores it once "
                "the database is free.",
                title="Run not stored yet",
                severity="warning",
                timeout=10,
            )

    @on(RunIngested)
    def _run_ingested(self, message: RunIngested) -> None:
        if message.status == "ok":
            self.notify(
                f"{message.run_id} finished and is stored. Runs (3) has it.", title="Run finished"
            )
        else:
            self.notify(
                f"{message.run_id}: {message.status}: {message.error or 'no reason'}."
                " Details on the Runs screen (3).",
                title=f"Run {message.status}",
                severity="error",
                timeout=10,
            )
        self.post_message(StoreChanged())

    # ------------------------------------------------------------------ the queue on disk

    @work(thread=True, exit_on_error=False, group="queue", name="queue watcher")
    def watch_queue(self) -> None:
        """Read the queue back from disk every QUEUE_POLL_S (at once when poked); while runs
        wait, make sure a dispatcher runs to start them (at start-up too)."""
        from efficientllm_tui.runs import queue

        worker = get_current_worker()
        self._after_first_frame()
        last: list[QueueRow] | None = None
        last_ensure: float | None = None
        while not (worker.is_cancelled or self._stopping.is_set()):
            self._queue_poke.clear()
            try:
                rows = queue.snapshot(self.home)
            except OSError:
                rows = last or []  # a data dir on a flaky mount: keep what we had
            if rows != last:
                last = rows
                self.post_message(QueueChanged(rows))
            now = time.monotonic()
            if any(r.state == "waiting" for r in rows) and (
                last_ensure is None or now - last_ensure >= ENSURE_EVERY_S
            ):
                self.ensure_dispatcher()
                last_ensure = now
            self._queue_poke.wait(QUEUE_POLL_S)

    @on(QueueChanged)
    def _queue_changed(self, message: QueueChanged) -> None:
        self.queued = message.rows
        hook = getattr(self.screen, "queue_changed", None) if self.screen_stack else None
        if callable(hook):
            hook()

    def ensure_dispatcher(self) -> None:
        """Make sure this host's dispatcher runs: it starts queued runs and stores ended
        ones. Called from worker threads."""
        from efficientllm_tui.runs import dispatcher

        dispatcher.ensure(self.home)

    @on(StoreChanged)
    def _store_changed(self) -> None:
        self.runs_version += 1
        self.load_recent()
        self.runs_changed.publish(None)

    # ------------------------------------------------------------------ store at start

    @work(thread=True, exit_on_error=False, group="store", name="recover")
    def startup_store(self) -> None:
        if not self._after_first_frame():
            return
        if self._recover:
            from efficientllm_tui.runs.ingest import recover

            done = recover(self.store(), self.home)
            ended = [r for r, s in done if s != "running" and not s.startswith("skipped")]
            if ended:
                self.call_from_thread(
                    self.notify,
                    f"stored {len(ended)} run(s) that ended while no one watched",
                    title="Recovered",
                )
        self.post_message(RecentRunsLoaded(self.store().list_runs(limit=8)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="recent", name="recent runs")
    def load_recent(self) -> None:
        self.post_message(RecentRunsLoaded(self.store().list_runs(limit=8)))

    @on(RecentRunsLoaded)
    def _recent_loaded(self, message: RecentRunsLoaded) -> None:
        self.recent = message.rows
        self.recent_changed.publish(message.rows)

    # ------------------------------------------------------------------ launching

    @work(thread=True, exit_on_error=False, group="launch", name="launch")
    def enqueue_runs(self, specs: list[RunSpec]) -> None:
        """Enqueue specs on disk, in the order given; the per-host dispatcher starts them,
        one run per device at a time, with or without the app."""
        from efficientllm_tui.runs import queue

        base_ns = time.time_ns()
        queued = 0
        for i, spec in enumerate(specs):
            try:  # one ns apart: the queue keeps the order even on a coarse clock
                queue.enqueue(spec, self.home, self.db_path, now_ns=base_ns + i)
            except (EfficientLLMError, OSError) as e:
                self.call_from_thread(self.report_error, e, "launch")
                continue
            queued += 1
        if queued:
            self.ensure_dispatcher()
            self.call_from_thread(
                self.notify,
                f"queued {queued} run(s); they start one per device and go on if you quit. "
                "Watch them on the Dashboard (1).",
                title="Launch",
            )
        self._queue_poke.set()

    def cancel_run(self, run_id: str) -> tuple[bool, str]:
        """Stop a run: a queued one leaves the queue, a running one gets SIGTERM (it
        records `cancelled`). Returns (done, what happened): not done when it had ended."""
        from efficientllm_tui.runs import queue

        what = "; ".join(w for _, w in queue.stop(self.home, [run_id]))
        self._queue_poke.set()
        return what.startswith(("stopping", "removed")), what
