"""Connection floods and vanishing clients: status is always answered, nothing leaks."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest

from profiling import home as home_mod
from profiling.daemon import client
from profiling.daemon.wire import LineReader, connect_unix, message_line
from tests.faults.daemon_rig import (
    IDLE_S,
    home_fixture,  # noqa: F401
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

CAP = 256  # server._MAX_CONNECTIONS
RESERVED = 16  # server._RESERVED_CONNECTIONS


def _server(home: Path) -> dict[str, int]:
    return status(home)["server"]


def test_idle_connection_flood_does_not_starve_status(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    path = home_mod.socket_path(home)
    idle = [connect_unix(path, 5.0) for _ in range(300)]
    try:
        # 256 slots + 16 reserved hold 272 of them; the other 28 and this status request
        # wait in the backlog until the longest-idle holders are closed for them.
        t0 = time.monotonic()
        st = client.daemon_status(home, timeout_s=5.0)
        took = time.monotonic() - t0
        assert st is not None and st["pid"] == info.pid
        srv = st["server"]
        assert srv["evicted"] == 300 + 1 - CAP - RESERVED  # 29
        assert srv["connections"] == CAP + RESERVED and srv["accept_pauses"] >= 1
        assert took < 2.0, f"status took {took:.2f} s"  # eviction waits 0.5 s of silence
        for sock in idle:
            sock.settimeout(1.0)
        closed = []
        for i, sock in enumerate(idle):
            try:
                sock.sendall(message_line({"op": "ping"}))
                reply = LineReader(sock).read_json()
            except (OSError, ValueError):
                reply = None
            if reply is None:
                closed.append(i)
            else:
                assert reply == {"ok": True, "pid": info.pid}
        assert closed == list(range(29))  # the oldest idle ones, and only those
    finally:
        for sock in idle:
            sock.close()


def test_subscriber_flood_still_answers_status(home: Path) -> None:
    info = client.ensure_daemon(home, rate_hz=2, idle_exit_s=IDLE_S)
    path = home_mod.socket_path(home)
    subs: list[socket.socket] = []
    replies = []
    try:
        for _ in range(CAP + 4):
            sock = connect_unix(path, 5.0)
            subs.append(sock)
            sock.sendall(message_line({"op": "subscribe", "since_ns": None}))
            replies.append(LineReader(sock).read_json())
        acked = [r for r in replies if r and r.get("subscribed")]
        refused = [r for r in replies if r and not r.get("ok")]
        assert len(acked) == CAP
        assert refused == [{"ok": False, "error": f"too many connections ({CAP} subscribers); "
                                                  "try again later"}] * 4
        st = status(home)
        assert st["pid"] == info.pid and st["subscribers"] == CAP
        # more one-shot clients than reserved slots, all at once: each still gets its answer
        waiting = [connect_unix(path, 5.0) for _ in range(RESERVED + 8)]
        for sock in waiting:
            sock.sendall(message_line({"op": "ping"}))
        assert [LineReader(s).read_json() for s in waiting] == \
            [{"ok": True, "pid": info.pid}] * (RESERVED + 8)
        for sock in waiting:
            sock.close()
    finally:
        for sock in subs:
            sock.close()
    wait_for(lambda: status(home)["subscribers"] == 0, 5, "subscribers to be dropped")


def _vanish(path: Path, kind: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    if kind == 1:
        sock.sendall(b'{"op": "stat')  # half a request
    elif kind == 2:
        sock.sendall(message_line({"op": "status"}))  # gone before the reply
    elif kind == 3:
        sock.sendall(message_line({"op": "subscribe", "since_ns": 0}))  # a replay, unread
    sock.close()


def _cycles(home: Path, n: int) -> tuple[int, int, int, int, float]:
    """(fds, threads) before and after `n` connect-and-vanish cycles, and their seconds."""
    client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S)
    pid = status(home)["pid"]
    proc = psutil.Process(pid)
    path = home_mod.socket_path(home)
    for i in range(40):  # warm up: every path taken once
        _vanish(path, i % 4)
    wait_for(lambda: _server(home)["connections"] == 1, 5, "warm-up connections to close")
    time.sleep(0.2)  # the last status connection closes on the daemon's side too
    fds0, threads0 = proc.num_fds(), proc.num_threads()
    t0 = time.monotonic()
    for i in range(n):
        _vanish(path, i % 4)
    took = time.monotonic() - t0
    wait_for(lambda: _server(home)["connections"] == 1, 5, "vanished connections to close")
    try:  # flat = back to the baseline within a moment (no status connection in flight)
        wait_for(lambda: proc.num_fds() == fds0, 2, "the fd count to settle")
    except AssertionError:
        pass  # reported by the caller's comparison
    return fds0, proc.num_fds(), threads0, proc.num_threads(), took


def test_connect_and_vanish_leaks_no_fd_or_thread(home: Path) -> None:
    fds0, fds1, threads0, threads1, took = _cycles(home, 2000)
    assert (fds1, threads1) == (fds0, threads0)
    srv = _server(home)
    assert srv["loop_errors"] == 0 and srv["accepted"] >= 2040
    print(f"2000 connect/vanish cycles in {took:.2f} s: fds {fds0} -> {fds1}, "
          f"threads {threads0} -> {threads1}")


@pytest.mark.slow
def test_connect_and_vanish_20000_cycles(home: Path) -> None:
    fds0, fds1, threads0, threads1, took = _cycles(home, 20_000)
    assert (fds1, threads1) == (fds0, threads0)
    print(f"20000 connect/vanish cycles in {took:.2f} s: fds {fds0} -> {fds1}")
