"""Watching queued runs from a terminal: one run event by event, or a batch by counts.

Only reads run dirs (the dispatcher starts and stores the runs), so a watcher can stop at
any moment, Ctrl-C or a dropped SSH connection, and nothing is lost: the runs go on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from efficientllm_tui.runs import dispatcher, queue, rundir
from profiling import home as homes
from runners.protocol import Event

ENSURE_EVERY_S = 2.0
"""How often a watcher makes sure a dispatcher runs (one may have been killed)."""


def stored_status(run_dir: Path) -> str | None:
    """The status a run was stored with, once stored in a final state; else None."""
    if not rundir.ingested_final(run_dir):
        return None
    try:
        return str(json.loads((run_dir / rundir.INGESTED_FILE).read_text("utf-8"))["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def follow_run(home: Path, run_id: str, on_event: Callable[[Event], None] | None = None, *,
               poll_s: float = 0.1, stored_timeout_s: float | None = None) -> str | None:
    """Tail a queued run until the dispatcher has stored it; returns its stored status.

    None when the run ended but was not stored within `stored_timeout_s` (a database held
    locked by another program): it stays safe in its run dir and is stored later.
    """
    run_dir = homes.runs_dir(home) / run_id
    tail = rundir.EventTail(run_dir)
    last_ensure = time.monotonic()
    ended_at: float | None = None
    while True:
        for ev in tail.poll():
            if ev.kind == "result" and ended_at is None:
                ended_at = time.monotonic()
            if on_event is not None:
                on_event(ev)
        status = stored_status(run_dir)
        if status is not None:
            for ev in tail.poll():
                if on_event is not None:
                    on_event(ev)
            return status
        now = time.monotonic()
        if ended_at is None and (run_dir / "events.jsonl").exists() \
                and not queue.is_waiting(run_dir) and not rundir.runner_alive(run_dir) \
                and rundir.runner_process(run_dir)[0] is not None:
            ended_at = now  # died: the dispatcher stores it as orphaned
        if now - last_ensure >= ENSURE_EVERY_S:
            dispatcher.ensure(home)
            last_ensure = now
        if stored_timeout_s is not None and ended_at is not None \
                and now - ended_at >= stored_timeout_s:
            return None
        time.sleep(poll_s)


def wait_stored(home: Path, run_id: str, timeout_s: float, *,
                stop: threading.Event | None = None, poll_s: float = 0.2,
                ensure: Callable[[], object] | None = None,
                ensure_after_s: float = ENSURE_EVERY_S,
                ensure_every_s: float = ENSURE_EVERY_S) -> str | None:
    """Wait until the dispatcher stored an ended run; its status, or None when `timeout_s`
    passed, the run dir vanished or `stop` was set. Keeps a dispatcher running meanwhile (one
    killed while the run ended is replaced): `ensure` (default dispatcher.ensure) is called
    after `ensure_after_s`, then every `ensure_every_s`."""
    run_dir = homes.runs_dir(home) / run_id
    start = time.monotonic()
    next_ensure = start + ensure_after_s
    while stop is None or not stop.is_set():
        status = stored_status(run_dir)
        if status is not None or not run_dir.is_dir():
            return status
        now = time.monotonic()
        if now - start >= timeout_s:
            return None
        if now >= next_ensure:
            if ensure is not None:
                ensure()
            else:
                dispatcher.ensure(home)
            next_ensure = now + ensure_every_s
        if stop is not None:
            stop.wait(poll_s)
        else:
            time.sleep(poll_s)
    return None


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch of queued runs stands."""

    total: int
    done: int
    """Runs stored in a final state."""
    running: tuple[str, ...]
    """Run ids going now."""
    failed: int
    """Stored runs whose status is not ok."""
    eta_s: float | None
    """Mean time a finished run took x the runs left, spread over the devices in use;
    None before the first run finished."""
    statuses: dict[str, str]
    """Stored status of each finished run."""


def batch_progress(home: Path, run_ids: Sequence[str], *, devices: int = 1) -> BatchProgress:
    """Counts of one batch from its run dirs (cheap enough to call every second)."""
    root = homes.runs_dir(home)
    statuses: dict[str, str] = {}
    running: list[str] = []
    took: list[float] = []
    for run_id in run_ids:
        run_dir = root / run_id
        status = stored_status(run_dir)
        if status is not None:
            statuses[run_id] = status
            events, _ = rundir.read_events(run_dir)
            if len(events) >= 2:
                took.append((events[-1].t_ns - events[0].t_ns) / 1e9)
            continue
        if (run_dir / "events.jsonl").exists() and not queue.is_waiting(run_dir):
            running.append(run_id)
    left = len(run_ids) - len(statuses)
    eta = (sum(took) / len(took)) * left / max(1, devices) if took and left else (
        0.0 if not left else None)
    return BatchProgress(len(run_ids), len(statuses), tuple(running),
                         sum(1 for s in statuses.values() if s != "ok"), eta, statuses)


def follow_batch(home: Path, run_ids: Sequence[str],
                 on_progress: Callable[[BatchProgress], None], *, poll_s: float = 1.0,
                 devices: int = 1) -> BatchProgress:
    """Call `on_progress` about every `poll_s` until every run of the batch is stored."""
    last_ensure = 0.0
    while True:
        progress = batch_progress(home, run_ids, devices=devices)
        on_progress(progress)
        if progress.done == progress.total:
            return progress
        now = time.monotonic()
        if now - last_ensure >= ENSURE_EVERY_S:
            dispatcher.ensure(home)
            last_ensure = now
        time.sleep(poll_s)
