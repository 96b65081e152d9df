"""A daemon killed or stopped mid-run: the watchdog starts a new one, which keeps watching."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from profiling.daemon import client
from profiling.daemon.client import RunnerWatch, pid_alive
from profiling.daemon.spool import list_segments
from profiling.daemon.watching import WATCH_FILE
from tests.faults.daemon_rig import (
    home_fixture,  # noqa: F401
    log_text,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

RATE_HZ = 20
PERIOD_NS = 1_000_000_000 // RATE_HZ
IDLE_S = 1.0  # short: a daemon that forgot the runner would be gone within the test


@pytest.fixture
def runner() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a runner process (`sleep`), killed afterwards."""
    proc = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def _spool_ticks(home: Path, daemon_pid: int) -> list[int]:
    """t_ns of the cpu samples in the segments `daemon_pid` wrote."""
    got = []
    for seg in list_segments(home / "spool"):
        if seg.pid == daemon_pid:
            for line in seg.path.read_bytes().splitlines():
                d = json.loads(line)
                if d["device"] == "cpu":
                    got.append(d["t_ns"])
    return sorted(got)


def test_killed_daemon_is_replaced_and_the_new_one_keeps_watching(
        home: Path, runner: subprocess.Popen[bytes]) -> None:
    first = client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S)
    assert client.watch(home, runner.pid, "run-k")
    since = status(home)["watched"][0]["since_ns"]
    wait_for(lambda: len(_spool_ticks(home, first.pid)) >= 5, 5, "samples")
    t_kill = time.time_ns()
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(first.pid), 5, "the daemon to die")

    # The dispatcher's watchdog tick: one call, no watch list needed.
    second = client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S)
    t_ready = time.time_ns()
    assert second.launched and second.pid != first.pid
    assert status(home)["watched"] == [{"pid": runner.pid, "run_id": "run-k",
                                        "since_ns": since}]
    assert f"watching pid {runner.pid} (run run-k) again, as the previous daemon did" \
        in log_text(home)
    time.sleep(IDLE_S + 1.5)  # past its idle exit: still there, the runner still runs
    assert pid_alive(second.pid)
    # The runner's tree is sampled again: rss of the watched tree on the cpu device.
    rss = psutil.Process(runner.pid).memory_info().rss
    with client.subscribe(home, since_ns=None, devices=["cpu"], timeout_s=3) as sub:
        sample = next(iter(sub))
    assert sample.rss_bytes == rss
    # What was lost is the gap between the kill and the new daemon's start, no more.
    old, new = _spool_ticks(home, first.pid), _spool_ticks(home, second.pid)
    assert old[-1] >= t_kill - 2 * PERIOD_NS
    assert new[0] <= t_ready + 2 * PERIOD_NS
    print(f"restart gap {(new[0] - old[-1]) / 1e6:.0f} ms")
    runner.kill()
    runner.wait()
    wait_for(lambda: not pid_alive(second.pid), IDLE_S + 5, "idle exit once the runner ended")


def test_stopped_daemon_and_lost_watch_file_are_covered_by_the_watchdog(
        home: Path, runner: subprocess.Popen[bytes]) -> None:
    first = client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S)
    assert client.watch(home, runner.pid, "run-s")
    assert client.stop_daemon(home)  # stopped mid-run (by a user, say)
    (home / WATCH_FILE).unlink()  # and its watch set is gone too
    watches = [RunnerWatch(runner.pid, "run-s")]
    second = client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S, watches=watches)
    assert second.launched and second.pid != first.pid
    watched: list[dict[str, object]] = status(home)["watched"]
    assert [(w["pid"], w["run_id"]) for w in watched] == [(runner.pid, "run-s")]
    # A watchdog tick with everything in place costs one status round trip, no more.
    before = status(home)["server"]["requests"]
    took = []
    for _ in range(50):
        t0 = time.perf_counter()
        info = client.ensure_daemon(home, watches=watches)
        took.append(time.perf_counter() - t0)
        assert info.pid == second.pid and not info.launched
    after = status(home)["server"]["requests"]
    assert after - before == 50 + 1  # 50 ticks + the status call that reads `after`
    median_ms = statistics.median(took) * 1e3
    assert median_ms < 50, f"a watchdog tick took {median_ms:.1f} ms"
    print(f"watchdog tick (ensure_daemon, daemon running): median {median_ms:.2f} ms")
    # rewatch is idempotent: since_ns stays
    since = status(home)["watched"][0]["since_ns"]
    assert client.rewatch(home, runner.pid, "run-s")
    assert status(home)["watched"] == [{"pid": runner.pid, "run_id": "run-s",
                                        "since_ns": since}]


def test_a_reused_pid_in_the_watch_file_is_not_watched(
        home: Path, runner: subprocess.Popen[bytes]) -> None:
    client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S)
    assert client.watch(home, runner.pid, "run-r")
    assert client.stop_daemon(home)
    doc = (home / WATCH_FILE).read_text()
    ctime = psutil.Process(runner.pid).create_time()
    # the saved create time no longer matches: the pid now names another process
    (home / WATCH_FILE).write_text(doc.replace(repr(ctime), repr(ctime - 100.0)))
    assert repr(ctime - 100.0) in (home / WATCH_FILE).read_text()
    client.ensure_daemon(home, rate_hz=RATE_HZ, idle_exit_s=IDLE_S)
    assert status(home)["watched"] == []
    assert f"pid {runner.pid} (run run-r), watched by the previous daemon, has exited" \
        in log_text(home)
