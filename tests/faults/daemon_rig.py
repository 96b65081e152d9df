"""Daemon fault injection on real processes: a real profiling daemon in a temporary data
dir, raw socket clients, signals and bystander processes; every test stops what it started.

Fixtures here are imported by name by the daemon's fault tests (the suite's conftest is the
app side's)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from profiling import home as home_mod
from profiling.daemon import client
from profiling.daemon.client import DaemonError

IDLE_S = 10.0
"""Idle exit of every daemon started here: a second guard should a finalizer fail."""


def daemons_of(home: Path) -> list[psutil.Process]:
    """Live daemon processes serving `home` (zombies left out)."""
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "profiling.daemon.service" in cmd and str(home) in cmd \
                and proc.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(proc)
    return out


def wait_for(cond: Callable[[], object], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def status(home: Path) -> dict[str, Any]:
    st = client.daemon_status(home)
    assert st is not None, "no daemon answers"
    return st


def _cleanup(home: Path) -> None:
    try:
        client.stop_daemon(home, timeout_s=3)
    except DaemonError:
        pass
    for proc in daemons_of(home):  # anything left (started by this test): kill by pid
        proc.kill()
    wait_for(lambda: not daemons_of(home), 5, "daemons to exit")


@pytest.fixture(name="home")
def home_fixture() -> Iterator[Path]:
    # A short path under /tmp keeps the socket path well within sun_path.
    with tempfile.TemporaryDirectory(prefix="ellmf-") as d:
        h = Path(d) / "home"
        yield h
        _cleanup(h)


@pytest.fixture(name="other_home")
def other_home_fixture() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ellmf-") as d:
        h = Path(d) / "other"
        yield h
        _cleanup(h)


@pytest.fixture(name="bystander")
def bystander_fixture() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process (`sleep 120`) of this user; killed afterwards."""
    proc = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def spawn_daemon(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """A daemon started by hand (for options ensure_daemon does not pass); waits until it
    answers. Output goes to its log, as ensure_daemon does it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(client.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "profiling.daemon.service", "--home", str(home),
           "--idle-exit-s", str(IDLE_S), "--no-simulate-gpu", *args]
    fd = os.open(home / home_mod.DAEMON_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: proc.poll() is not None or client.daemon_status(home) is not None, 10,
             "the daemon to answer")
    assert proc.poll() is None, (home / home_mod.DAEMON_LOG_FILE).read_text()
    return proc


def log_text(home: Path) -> str:
    return (home / home_mod.DAEMON_LOG_FILE).read_text(errors="replace")
