"""Appends Event lines to RUN_DIR/events.jsonl so that a killed runner loses no finished event.

Each event is one `os.write` of one complete line to a file opened with O_APPEND: there is
no user-space buffer to lose on SIGKILL, and a reader never sees half a line from a writer
that was interrupted between events. `result` and `error` are also fsync'ed, because they
are the events an ingest after a machine crash must not miss.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from runners.protocol import Event

_DURABLE_KINDS = frozenset(("result", "error"))


class EventLog:
    """The runner's one writer of events.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()

    def emit(self, event: Event) -> Event:
        data = (event.to_json() + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if event.kind in _DURABLE_KINDS:
                os.fsync(self._fd)
        return event

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
