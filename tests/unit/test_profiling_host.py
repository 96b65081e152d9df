"""The psutil host backend, with real child processes as watched runners."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from profiling.backends.base import WatchSet
from profiling.backends.host import HostBackend, process_create_time, watched_alive

MB = 1_000_000

# Allocates N MB (touched, so resident), optionally starts a grandchild that does the same,
# writes the ready file, then sleeps (or spins) until killed.
CHILD = r"""
import os, subprocess, sys, time
mb, grand_mb, spin, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
block = b"x" * (mb * 1_000_000)
if grand_mb:
    grand = "import sys, time; b = b'y' * (%d * 1_000_000); open(sys.argv[1], 'w').close(); " \
            "time.sleep(60)" % grand_mb
    subprocess.Popen([sys.executable, "-c", grand, ready + ".grand"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    while not os.path.exists(ready + ".grand"):
        time.sleep(0.01)
open(ready, "w").close()
end = time.time() + 60
while time.time() < end:
    if not spin:
        time.sleep(0.05)
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(mb: int = 0, grand_mb: int = 0, spin: bool = False) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"ready{len(procs)}"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(mb), str(grand_mb),
                                 "1" if spin else "0", str(ready)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None, "child died"
            assert time.monotonic() < deadline, "child not ready"
            time.sleep(0.01)
        return proc

    yield start
    for proc in procs:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
        proc.kill()
        proc.wait()


def test_host_sample_without_watch() -> None:
    backend = HostBackend(WatchSet())
    assert backend.devices() == ["cpu"]
    time.sleep(0.05)
    (s,) = backend.sample(time.time_ns())
    assert (s.device, s.source, s.host) == ("cpu", "psutil", socket.gethostname())
    assert s.mem_total_bytes == psutil.virtual_memory().total
    assert s.mem_used_bytes is not None and 0 < s.mem_used_bytes <= s.mem_total_bytes
    assert s.util_pct is not None and 0.0 <= s.util_pct <= 100.0
    assert s.cpu_pct is None and s.rss_bytes is None
    assert s.power_w is None  # no RAPL here: unknown, never 0
    assert s.sm_active_pct is None


def test_first_util_right_after_start_is_unknown() -> None:
    backend = HostBackend()
    (s,) = backend.sample(time.time_ns())
    assert s.util_pct is None


def test_watched_tree_memory_and_cpu(spawn) -> None:  # type: ignore[no-untyped-def]
    child = spawn(mb=60, grand_mb=30)
    ws = WatchSet()
    backend = HostBackend(ws, tree_refresh_s=0.0)
    ws.add(child.pid, "run-1", process_create_time(child.pid))
    (first,) = backend.sample(time.time_ns())
    assert first.rss_bytes is not None and first.rss_bytes > 90 * MB  # child + grandchild
    assert first.cpu_pct is None  # no baseline yet
    assert len(backend.tracked_pids()) == 2
    time.sleep(0.1)
    (second,) = backend.sample(time.time_ns())
    assert second.cpu_pct is not None and second.cpu_pct >= 0.0
    assert second.rss_bytes is not None and second.rss_bytes > 90 * MB


def test_cpu_pct_of_a_busy_child(spawn) -> None:  # type: ignore[no-untyped-def]
    child = spawn(spin=True)
    ws = WatchSet()
    ws.add(child.pid)
    backend = HostBackend(ws)
    backend.sample(time.time_ns())
    time.sleep(0.3)
    (s,) = backend.sample(time.time_ns())
    assert s.cpu_pct is not None and 40.0 < s.cpu_pct < 110.0


def test_dead_and_reused_pids(spawn) -> None:  # type: ignore[no-untyped-def]
    child = spawn(mb=10)
    ws = WatchSet()
    backend = HostBackend(ws, tree_refresh_s=0.0)
    entry = ws.add(child.pid, "r", process_create_time(child.pid))
    assert watched_alive(entry)
    backend.sample(time.time_ns())
    child.kill()
    time.sleep(0.05)
    assert not watched_alive(entry)  # a zombie is not alive
    (s,) = backend.sample(time.time_ns())
    assert s.rss_bytes is None and s.cpu_pct is None
    child.wait()
    assert not watched_alive(entry)
    (s,) = backend.sample(time.time_ns())
    assert s.rss_bytes is None
    # our own pid with a create time that does not match: treated as a reused pid
    ws.discard(child.pid)
    ws.add(os.getpid(), "other", create_time=1.0)
    (s,) = backend.sample(time.time_ns())
    assert s.rss_bytes is None


def test_unwatch_and_power_hook() -> None:
    ws = WatchSet()
    backend = HostBackend(ws, power_reader=lambda now_ns: 42.5)
    ws.add(os.getpid(), "me", process_create_time(os.getpid()))
    (s,) = backend.sample(time.time_ns())
    assert s.rss_bytes is not None and s.rss_bytes > 0
    assert s.power_w == 42.5
    ws.discard(os.getpid())
    (s,) = backend.sample(time.time_ns())
    assert s.rss_bytes is None
