"""Stale pid files: `daemon stop` signals only a process proven to be this home's daemon."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from profiling import home as home_mod
from profiling.daemon import client
from profiling.daemon.client import pid_alive
from profiling.daemon.wire import bind_unix
from tests.faults.daemon_rig import (  # noqa: F401
    IDLE_S,
    bystander_fixture,
    home_fixture,
    log_text,
    other_home_fixture,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


def _stale(home: Path, pid: int) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / home_mod.DAEMON_PID_FILE
    path.write_text(f"{pid}\n")
    return path


def _removed_line(path: Path, pid: int, why: str) -> str:
    return f"removed stale pid file {path}: pid {pid} {why}; it was not signalled"


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None and psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE


def test_hung_socket_and_stale_pid_file_leave_the_bystander_alone(
        home: Path, bystander: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture) -> None:
    # Something holds the socket but never answers (a hung daemon whose pid was reused);
    # the pid file names an unrelated process of this user.
    pid_path = _stale(home, bystander.pid)
    listener = bind_unix(home_mod.socket_path(home))
    try:
        with caplog.at_level(logging.WARNING, logger="profiling.daemon.client"):
            stopped = client.stop_daemon(home, timeout_s=1.0)
    finally:
        listener.close()
    assert stopped is False
    assert _alive(bystander), "the bystander was signalled"
    assert not pid_path.exists()
    assert [r.getMessage() for r in caplog.records] == [
        _removed_line(pid_path, bystander.pid, "runs `sleep 120`, not the profiling daemon")]


def test_no_socket_stale_pid_file_is_removed_with_a_note(
        home: Path, bystander: subprocess.Popen[bytes]) -> None:
    pid_path = _stale(home, bystander.pid)
    notes: list[str] = []
    assert client.stop_daemon(home, timeout_s=1.0, note=notes.append) is False
    assert _alive(bystander)
    assert not pid_path.exists()
    assert notes == [_removed_line(pid_path, bystander.pid,
                                   "runs `sleep 120`, not the profiling daemon")]
    # a pid that names no process at all
    gone = subprocess.Popen(["true"])
    gone.wait()
    _stale(home, gone.pid)
    notes.clear()
    assert client.stop_daemon(home, timeout_s=1.0, note=notes.append) is False
    assert notes == [_removed_line(pid_path, gone.pid, "is not running")]


def test_daemon_of_another_home_is_not_signalled(home: Path, other_home: Path) -> None:
    other = client.ensure_daemon(other_home, idle_exit_s=IDLE_S)
    pid_path = _stale(home, other.pid)
    listener = bind_unix(home_mod.socket_path(home))
    notes: list[str] = []
    try:
        assert client.stop_daemon(home, timeout_s=1.0, note=notes.append) is False
    finally:
        listener.close()
    assert pid_alive(other.pid) and status(other_home)["pid"] == other.pid
    assert notes == [_removed_line(pid_path, other.pid,
                                   f"is the profiling daemon of another data dir ({other_home})")]


def test_daemon_that_lost_its_socket_is_still_stopped(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    os.unlink(home_mod.socket_path(home))  # e.g. a cleanup of the data dir
    assert client.daemon_status(home) is None
    notes: list[str] = []
    assert client.stop_daemon(home, timeout_s=5.0, note=notes.append) is True
    assert not pid_alive(info.pid) and notes == []
    assert "stopping: SIGTERM" in log_text(home)
    assert not (home / home_mod.DAEMON_PID_FILE).exists()


def test_hung_daemon_of_this_home_is_terminated(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    os.kill(info.pid, signal.SIGSTOP)  # answers nothing: the socket accepts and stays silent
    try:
        with pytest.raises(client.DaemonError, match="did not stop within 1 s"):
            client.stop_daemon(home, timeout_s=1.0)
    finally:
        os.kill(info.pid, signal.SIGCONT)  # the SIGTERM it got is delivered now
    wait_for(lambda: not pid_alive(info.pid), 5, "the daemon to take its SIGTERM")
    assert "stopping: SIGTERM" in log_text(home)


def test_cli_stop_says_what_it_did(home: Path, bystander: subprocess.Popen[bytes]) -> None:
    pid_path = _stale(home, bystander.pid)
    env = dict(os.environ, EFFICIENTLLM_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "efficientllm_tui.cli", "daemon", "stop"],
                         capture_output=True, text=True, env=env, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "no profiling daemon was running\n"
    assert out.stderr == _removed_line(pid_path, bystander.pid,
                                       "runs `sleep 120`, not the profiling daemon") + "\n"
    assert _alive(bystander)
