"""The app's launch queue: one run per device at a time, the next starts when one ends.

Why queue here rather than spawn everything and let the runners' device locks decide: a
waiting runner has already imported torch (hundreds of MB each), and a file lock does not
promise first-come order. Queued pairs live only in the app (a spawned run outlives it; a
queued one is dropped on quit, which the app asks to confirm).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from runners.protocol import RunSpec


def device_key(device: str, have_gpu: bool) -> str:
    """The queue a device string belongs to: `auto` is `cuda:0` with a GPU, else `cpu`."""
    if device == "auto":
        return "cuda:0" if have_gpu else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


@dataclass
class DeviceQueue:
    """One device: the run going now and the specs waiting, in order."""

    running: str | None = None
    """Run id of the run this app started on the device, while it runs."""
    pending: deque[RunSpec] = field(default_factory=deque)


class LaunchQueue:
    """Per-device FIFO queues of RunSpecs (UI thread only)."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceQueue] = {}
        self._key_of: dict[str, str] = {}

    def submit(self, specs: Iterable[RunSpec], have_gpu: bool) -> list[RunSpec]:
        """Queue specs; returns those to start now (their device was free), marked running."""
        start: list[RunSpec] = []
        for spec in specs:
            key = device_key(spec.device, have_gpu)
            q = self.devices.setdefault(key, DeviceQueue())
            self._key_of[spec.run_id] = key
            if q.running is None and not q.pending:
                q.running = spec.run_id
                start.append(spec)
            else:
                q.pending.append(spec)
        return start

    def finished(self, run_id: str) -> RunSpec | None:
        """A run ended: free its device; returns the next spec to start there, if any."""
        key = self._key_of.pop(run_id, None)
        if key is None:
            return None
        q = self.devices[key]
        if q.running == run_id:
            q.running = None
        if q.running is None and q.pending:
            nxt = q.pending.popleft()
            q.running = nxt.run_id
            return nxt
        return None

    def cancel_pending(self) -> int:
        """Drop every queued (not yet started) spec; returns how many."""
        n = 0
        for q in self.devices.values():
            for spec in q.pending:
                self._key_of.pop(spec.run_id, None)
            n += len(q.pending)
            q.pending.clear()
        return n

    @property
    def pending_count(self) -> int:
        return sum(len(q.pending) for q in self.devices.values())

    @property
    def running_ids(self) -> list[str]:
        return [q.running for q in self.devices.values() if q.running]
