"""Active runs: found in the data dir, tailed through their events, summarised for the screen.

The watcher runs on a worker thread and only reads files (run dirs are the protocol: a run
started by the CLI, another TUI or this one looks the same). The app applies what it finds
to `ActiveRun` records on the UI thread. Runs still waiting in the queue are not active:
the watcher picks them up once the dispatcher has started them.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from efficientllm_tui.runs import fold, rundir
from efficientllm_tui.runs import queue as runqueue
from profiling import home as homes
from runners.protocol import SPEC_FILE, Event, ProtocolError, RunSpec

INGESTED_MARK = "ingested.json"
"""Written by ingest when a run is stored (same name as efficientllm_tui.runs.ingest uses)."""
_PID_GRACE_S = 30.0
"""A run dir without any pid file this young is still being spawned."""
_RECENT_STEPS = 20


@dataclass
class ActiveRun:
    """What the dashboard shows of one running run, updated event by event."""

    run_id: str
    run_dir: Path
    family: str = "?"
    model: str = "?"
    technique: str = "?"
    device: str = "?"
    sample_device: str | None = None
    """The device as samples name it (`gpu0`, `cpu`): where its live graphs come from."""
    started_ns: int | None = None
    phase: str = "starting"
    phase_since_ns: int | None = None
    total_steps: int = 0
    """Warm-up plus measured iterations (the progress denominator)."""
    steps_done: int = 0
    """Warm-up and measured steps done, never past `total_steps` (runs.fold.steps_done)."""
    warmup: int = 0
    """Warm-up iterations (a restarted measure phase counts from after them)."""
    loss: float | None = None
    window_energy_j: float = 0.0
    """Energy of the measurement windows already closed (runner's counter)."""
    host: str | None = None
    """The node a run submitted to a Ray cluster runs on (from its `started` event); None
    for a run on this machine."""
    status: str = "running"
    error: str | None = None
    ended: bool = False
    endings: list[Event] = field(default_factory=list)
    """The run's `error` and `result` events so far (runs.fold reads its ending from them)."""
    recent: deque[tuple[float, int | None, int | None]] = field(
        default_factory=lambda: deque(maxlen=_RECENT_STEPS)
    )
    """(latency_s, tokens, samples) of the latest steps of the current phase."""

    @classmethod
    def from_dir(cls, run_dir: Path, spec: RunSpec | None) -> ActiveRun:
        run = cls(run_id=spec.run_id if spec else run_dir.name, run_dir=run_dir)
        if spec is not None:
            run.family, run.model, run.technique = spec.family, spec.model, spec.technique
            run.device = spec.device
            run.total_steps = spec.warmup + spec.steps
            run.warmup = spec.warmup
            run.started_ns = spec.created_ns or None
            run.sample_device = _sample_device(spec.device)
        return run

    def apply(self, ev: Event) -> None:
        """Fold one event into the summary."""
        if ev.kind == "started":
            if (self.run_dir / rundir.REMOTE_FILE).exists():
                self.host = str(ev.get("host") or "remote")
            self.started_ns = ev.t_ns
            device = ev.get("device")
            if device:
                self.device = str(device)
            self.sample_device = ev.get("sample_device") or _sample_device(self.device)
        elif ev.kind == "phase":
            name = str(ev.get("name") or "?")
            if name != self.phase:
                self.recent.clear()
            self.phase, self.phase_since_ns = name, ev.t_ns
            self.steps_done = fold.steps_done(self.steps_done, ev, warmup=self.warmup,
                                              total=self.total_steps)
        elif ev.kind == "step":
            self.steps_done = fold.steps_done(self.steps_done, ev, warmup=self.warmup,
                                              total=self.total_steps)
            latency = ev.get("latency_s")
            if isinstance(latency, (int, float)) and latency > 0:
                self.recent.append((float(latency), ev.get("tokens"), ev.get("samples")))
            if ev.get("loss") is not None:
                self.loss = float(ev.get("loss"))
        elif ev.kind == "window":
            if isinstance(ev.get("energy_j"), (int, float)):
                self.window_energy_j += float(ev.get("energy_j"))
        elif ev.kind in ("error", "result"):
            self.endings.append(ev)
            end = fold.ending(self.endings)
            if end is not None:  # the same rule as ingest
                self.status = end.status
                self.error = (f"{end.error_type}: {end.error_text}" if end.error_type
                              else end.error_text)

    @property
    def phase_text(self) -> str:
        """The phase as the active-run line shows it: `convert (one-time ~1 min)` for a phase
        that runs once per machine (runs.fold.ONE_TIME_PHASES), else its name."""
        if self.phase in fold.ONE_TIME_PHASES:
            return f"{self.phase} (one-time {fold.ONE_TIME_PHASES[self.phase][2]})"
        return self.phase

    @property
    def progress(self) -> float | None:
        """Share of warm-up + measured iterations done, 0..1 (None when unknown)."""
        if not self.total_steps:
            return None
        return min(1.0, self.steps_done / self.total_steps)

    def eta_s(self) -> float | None:
        """Seconds left for the remaining iterations at the recent mean latency."""
        if not self.total_steps or not self.recent:
            return None
        left = max(0, self.total_steps - self.steps_done)
        mean = sum(r[0] for r in self.recent) / len(self.recent)
        return left * mean

    def rate(self) -> tuple[float | None, str]:
        """Recent throughput: tokens/s for inference and pretraining, samples/s for fine-tuning."""
        if not self.recent:
            return None, ""
        wall = sum(r[0] for r in self.recent)
        use_samples = self.family == "finetuning"
        counts = [r[2] if use_samples else r[1] for r in self.recent]
        if wall <= 0 or any(c is None for c in counts):
            return None, ""
        return sum(c for c in counts if c is not None) / wall, (
            "samples/s" if use_samples else "tokens/s"
        )


def _sample_device(device: str) -> str | None:
    if device.startswith("cuda"):
        return f"gpu{device.partition(':')[2] or 0}"
    if device == "cpu":
        return "cpu"
    return None  # auto: known once the runner reports its device


@dataclass
class WatchUpdate:
    """What one poll of the run dirs found."""

    new: list[tuple[Path, RunSpec | None]] = field(default_factory=list)
    events: dict[str, list[Event]] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.events or self.ended)


class RunWatcher:
    """Finds live run dirs and tails their events (call `poll` from one thread only)."""

    def __init__(self, home: Path, scan_every_s: float = 2.0) -> None:
        self.runs_dir = homes.runs_dir(home)
        self.scan_every_s = scan_every_s
        self._settled: set[str] = set()
        self._tails: dict[str, tuple[Path, rundir.EventTail]] = {}
        self._terminal: set[str] = set()
        self._dead_polls: dict[str, int] = {}
        self._added: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._next_scan = 0.0
        self._first_scan = True

    def add(self, run_dir: Path) -> None:
        """Tail this run from the next poll on (thread-safe; used right after a spawn)."""
        self._added.put(run_dir)

    def poll(self) -> WatchUpdate:
        update = WatchUpdate()
        while not self._added.empty():
            self._start(self._added.get(), update)
        if time.monotonic() >= self._next_scan:
            self._scan(update)
            self._next_scan = time.monotonic() + self.scan_every_s
        for name, (run_dir, tail) in list(self._tails.items()):
            events = tail.poll()
            if events:
                update.events[name] = events
                if any(e.kind in ("result", "error") for e in events):
                    self._terminal.add(name)
            if rundir.runner_alive(run_dir):
                self._dead_polls[name] = 0
                continue
            self._dead_polls[name] = self._dead_polls.get(name, 0) + 1
            # A dead runner with its ending read is over; one without gets one more read.
            if name in self._terminal or self._dead_polls[name] >= 2:
                late = tail.poll()
                if late:
                    update.events.setdefault(name, []).extend(late)
                update.ended.append(name)
                del self._tails[name]
                self._settled.add(name)
        return update

    def _start(self, run_dir: Path, update: WatchUpdate) -> None:
        name = run_dir.name
        if name in self._tails:
            return
        self._settled.discard(name)
        self._tails[name] = (run_dir, rundir.EventTail(run_dir))
        update.new.append((run_dir, _read_spec(run_dir)))

    def _scan(self, update: WatchUpdate) -> None:
        first, self._first_scan = self._first_scan, False
        try:
            entries = list(os.scandir(self.runs_dir))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if name in self._settled or name in self._tails or not entry.is_dir():
                continue
            run_dir = Path(entry.path)
            if not (run_dir / SPEC_FILE).is_file():
                if _age_s(run_dir) > _PID_GRACE_S:
                    self._settled.add(name)  # not a run dir
                continue
            if rundir.ingested_final(run_dir):
                self._settled.add(name)
                continue
            if runqueue.is_waiting(run_dir):
                continue  # not started yet, however long it waits: look again next scan
            pid = rundir.runner_pid(run_dir)
            if rundir.runner_alive(run_dir):
                self._start(run_dir, update)
            elif pid is None and _age_s(run_dir) < _PID_GRACE_S:
                continue  # being spawned: look again next scan
            elif first:
                self._settled.add(name)  # ended before we looked: recover() stores it
            else:
                self._settled.add(name)
                update.ended.append(name)  # ended between scans, unseen: store it


def _read_spec(run_dir: Path) -> RunSpec | None:
    try:
        return RunSpec.from_json((run_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ProtocolError):
        return None


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
