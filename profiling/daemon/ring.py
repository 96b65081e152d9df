"""A fixed-capacity, thread-safe ring of recent Samples (the daemon's live history).

The daemon keeps the last few minutes of every device here so a subscriber that connects
late (the TUI reopened over SSH) first gets the history, then the live stream. Each entry
may carry its already-encoded JSON line, so a replay costs no re-encoding.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence

from profiling.daemon.wire import sample_line
from profiling.sample import Sample


class Ring:
    """The newest `capacity` samples; appending to a full ring drops the oldest.

    Size it as seconds x rate x devices, e.g. `Ring.for_duration(600, 10, 2)` keeps ten
    minutes of two devices at 10 Hz.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._items: deque[tuple[Sample, bytes | None]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._appended = 0

    @classmethod
    def for_duration(cls, seconds: float, rate_hz: float, n_devices: int,
                     max_capacity: int = 500_000) -> Ring:
        """A ring holding `seconds` of `n_devices` at `rate_hz` (capped to bound memory)."""
        wanted = int(seconds * rate_hz * max(1, n_devices)) + max(1, n_devices)
        return cls(max(1, min(wanted, max_capacity)))

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def appended(self) -> int:
        """Samples appended since creation (including those since overwritten)."""
        with self._lock:
            return self._appended

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def append(self, sample: Sample, line: bytes | None = None) -> None:
        """Add one sample, with its encoded line when the caller already has it."""
        with self._lock:
            self._items.append((sample, line))
            self._appended += 1

    def extend(self, samples: Sequence[Sample], lines: Sequence[bytes] | None = None) -> None:
        """Add the samples of one tick; `lines[i]` is the encoded form of `samples[i]`."""
        if lines is not None and len(lines) != len(samples):
            raise ValueError("samples and lines differ in length")
        pairs: Iterable[tuple[Sample, bytes | None]] = (
            zip(samples, lines, strict=True) if lines is not None else ((s, None) for s in samples))
        with self._lock:
            self._items.extend(pairs)
            self._appended += len(samples)

    def snapshot(self, since_ns: int | None = None,
                 devices: set[str] | None = None) -> list[Sample]:
        """Samples in arrival order with t_ns > since_ns (all when None), of `devices`."""
        return [s for s, _ in self._select(since_ns, devices)]

    def snapshot_lines(self, since_ns: int | None = None,
                       devices: set[str] | None = None) -> list[bytes]:
        """Like snapshot, as newline-terminated JSON lines (the spool and socket format)."""
        return [line if line is not None else sample_line(s)
                for s, line in self._select(since_ns, devices)]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _select(self, since_ns: int | None,
                devices: set[str] | None) -> list[tuple[Sample, bytes | None]]:
        # Copy under the lock (a C-speed list() of the deque), filter outside it, so the
        # sampling thread never waits on a long replay. A full scan, not a bisect: the wall
        # clock may step back, and a scan stays right when it does.
        with self._lock:
            items = list(self._items)
        if since_ns is None and devices is None:
            return items
        return [(s, line) for s, line in items
                if (since_ns is None or s.t_ns > since_ns)
                and (devices is None or s.device in devices)]
