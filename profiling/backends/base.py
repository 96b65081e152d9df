"""The sampling backend interface and the set of runner processes the daemon watches.

A backend turns "now" into one Sample per device it owns. The daemon owns the schedule,
the ring, the spool and the socket; a backend only reads hardware. That split is what lets
an NVML+GPM backend, a RAPL reader or a simulated GPU slot in without touching the daemon:
each is a class with `name`, `devices()`, `sample(now_ns)` and `close()`, listed in
`BACKEND_FACTORIES`.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from profiling.sample import Sample


class BackendUnavailable(Exception):
    """A backend cannot run on this machine (no driver, no permission, no device)."""


@dataclass(frozen=True, slots=True)
class Watched:
    """One watched runner process: the root of a process tree that the host backend sums."""

    pid: int
    """Process id of the runner."""
    run_id: str | None
    """The run it executes, for status and for marking foreign processes later."""
    since_ns: int
    """Wall clock when the watch began."""
    create_time: float | None
    """psutil create time of the pid when watched; tells a reused pid from the runner."""

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "run_id": self.run_id, "since_ns": self.since_ns}


class WatchSet:
    """The runner pids the daemon watches; shared by the daemon and every backend.

    Thread-safe: the socket thread adds and removes entries while the sampling thread reads
    them. Readers get an immutable snapshot plus a `version` that changes on every edit, so
    a backend can cache per-tree state and rebuild it only when the set changed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Watched] = {}
        self._version = 0

    def add(self, pid: int, run_id: str | None = None, create_time: float | None = None,
            now_ns: int | None = None) -> Watched:
        """Watch `pid` (replacing an older entry for the same pid)."""
        entry = Watched(pid=pid, run_id=run_id,
                        since_ns=time.time_ns() if now_ns is None else now_ns,
                        create_time=create_time)
        with self._lock:
            self._items[pid] = entry
            self._version += 1
        return entry

    def discard(self, pid: int) -> bool:
        """Stop watching `pid`; True when it was watched."""
        with self._lock:
            if self._items.pop(pid, None) is None:
                return False
            self._version += 1
            return True

    def snapshot(self) -> tuple[int, tuple[Watched, ...]]:
        """(version, entries) taken atomically."""
        with self._lock:
            return self._version, tuple(self._items.values())

    def entries(self) -> tuple[Watched, ...]:
        return self.snapshot()[1]

    def pids(self) -> list[int]:
        return [w.pid for w in self.entries()]

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def prune(self, is_alive: Callable[[Watched], bool]) -> list[Watched]:
        """Drop entries whose process is gone; returns the dropped ones.

        `is_alive` runs outside the lock (it may read /proc), so an entry re-added meanwhile
        under the same pid is kept.
        """
        dead = [w for w in self.entries() if not is_alive(w)]
        removed = []
        with self._lock:
            for w in dead:
                if self._items.get(w.pid) is w:
                    del self._items[w.pid]
                    removed.append(w)
            if removed:
                self._version += 1
        return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Backend(ABC):
    """One source of samples (psutil host, NVML+GPM GPUs, simulated GPU, ...).

    `sample` is called from the daemon's sampling thread only, at the configured rate, with
    the tick's wall clock; it returns one Sample per device, stamped `now_ns`, and must not
    block for long (the daemon measures overruns). A backend that fails one tick raises; the
    daemon logs it once and tries again next tick. Unknown readings are None, never 0.
    """

    name: str
    """Short id shown in status: `psutil`, `nvml`, `simulated`."""

    @abstractmethod
    def devices(self) -> list[str]:
        """The device ids this backend samples, e.g. ['cpu'] or ['gpu0', 'gpu1']."""

    @abstractmethod
    def sample(self, now_ns: int) -> list[Sample]:
        """Read every device once; each Sample carries t_ns=now_ns."""

    def watch(self, pid: int) -> None:  # noqa: B027 - optional hook, default does nothing
        """A runner pid was added to the watch set (e.g. to tell foreign GPU processes)."""

    def unwatch(self, pid: int) -> None:  # noqa: B027 - optional hook, default does nothing
        """A runner pid left the watch set."""

    def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release handles (NVML shutdown, open files). Called once at daemon exit."""

    def status(self) -> dict[str, Any]:
        """What the daemon's status shows for this backend (power source, lost GPUs, ...)."""
        return {}

    def lost_devices(self) -> list[str]:
        """Devices this backend can no longer sample (a GPU that fell off the bus)."""
        return []


BackendFactory = Callable[..., Backend]

BACKEND_FACTORIES: dict[str, str] = {
    "psutil": "profiling.backends.host:host_backend",
    "nvml": "profiling.backends.nvml:NvmlBackend",
    "simulated": "profiling.backends.simulated:SimulatedBackend",
}
"""Backend name -> "module:callable". Each callable takes `watch_set=` (plus its own keyword
options) and may raise BackendUnavailable; modules are imported only when the backend is
asked for, so a missing driver library never stops the host backend."""


def load_backend(name: str, watch_set: WatchSet, **options: Any) -> Backend:
    """Build the backend called `name` with its keyword `options`; raises
    BackendUnavailable with the reason."""
    target = BACKEND_FACTORIES.get(name)
    if target is None:
        raise BackendUnavailable(
            f"unknown backend {name!r} (known: {', '.join(sorted(BACKEND_FACTORIES))})")
    module_name, _, attr = target.partition(":")
    try:
        factory: BackendFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise BackendUnavailable(f"backend {name!r} cannot be loaded: {e}") from e
    return factory(watch_set=watch_set, **options)
