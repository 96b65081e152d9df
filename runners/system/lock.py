"""The per-device lock: one measured run per device at a time, across TUI and CLI launches.

`fcntl.flock` on `<data dir>/locks/<device>.lock`. The kernel drops the lock when the
holder exits, however it exits, so a crashed or killed runner never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from profiling.home import LOCKS_DIR


def lock_name(device: str) -> str:
    """`cpu` -> `cpu.lock`, `cuda:0` -> `cuda0.lock`."""
    return device.replace(":", "") + ".lock"


def lock_path(home: Path, device: str) -> Path:
    return home / LOCKS_DIR / lock_name(device)


class DeviceLock:
    """An exclusive flock on one device's lock file, held until `release` or exit."""

    def __init__(self, home: Path, device: str) -> None:
        self.path = lock_path(home, device)
        self._fd: int | None = None
        self.waited_s = 0.0
        """Seconds spent waiting for another run to release the device."""

    def acquire(self, on_wait: Callable[[], None] | None = None) -> None:
        """Take the lock; if another process holds it, call `on_wait` once, then block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                t0 = time.monotonic()
                fcntl.flock(fd, fcntl.LOCK_EX)  # a signal handler's exception ends the wait
                self.waited_s = time.monotonic() - t0
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # The holder's pid, for people looking at the file; the flock is what counts.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
