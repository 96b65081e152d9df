"""Any frame on the socket gets one error line and the daemon goes on serving."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

from profiling import home as home_mod
from profiling.daemon import client
from profiling.daemon.client import pid_alive
from profiling.daemon.wire import MAX_LINE_BYTES, LineReader, connect_unix
from tests.faults.daemon_rig import (
    IDLE_S,
    home_fixture,  # noqa: F401
    log_text,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

PID_ERROR = "pid must be a positive integer <= 4194304"
DEPTH_ERROR = "bad request: nested deeper than 8 levels"


def _frames(me: int) -> list[tuple[bytes, str]]:
    """(frame, the exact error it must get); each frame is one line."""
    return [
        (b"[" * 30_000 + b"]" * 30_000, DEPTH_ERROR),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, DEPTH_ERROR),
        (b'{"op": "status", "x": ' + b"[" * 9 + b"]" * 9 + b"}", DEPTH_ERROR),
        (b"\xff\xfe{}", "bad request: not UTF-8 (byte 0)"),
        (b'{"op": "st\xc3"}', "bad request: not UTF-8 (byte 10)"),
        (b"not json", "bad request: not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"\x00" * 16, "bad request: not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"op": "status"', "bad request: not JSON: Expecting ',' delimiter: line 1 column "
                             "16 (char 15)"),
        (b"[1, 2]", "bad request: expected a JSON object, got list"),
        (b'"status"', "bad request: expected a JSON object, got str"),
        (b"null", "bad request: expected a JSON object, got NoneType"),
        (b'{"op": 5}', "bad request: expected a JSON object with an 'op' string"),
        (b'{"pid": 1}', "bad request: expected a JSON object with an 'op' string"),
        (b'{"op": "watch", "pid": "12"}', PID_ERROR),
        (b'{"op": "watch", "pid": true}', PID_ERROR),
        (b'{"op": "watch", "pid": 1e400}', PID_ERROR),
        (b'{"op": "watch", "pid": NaN}', PID_ERROR),
        (b'{"op": "watch", "pid": 99999999999999999999999}', PID_ERROR),
        (b'{"op": "watch", "pid": -1}', PID_ERROR),
        (b'{"op": "unwatch", "pid": [1]}', PID_ERROR),
        (f'{{"op": "watch", "pid": {me}, "run_id": 7}}'.encode(), "run_id must be a string"),
        (f'{{"op": "watch", "pid": {me}, "simulate_gpu": "yes"}}'.encode(),
         "simulate_gpu must be true or false"),
        (b'{"op": "subscribe", "since_ns": "x"}', "since_ns must be a non-negative integer"),
        (b'{"op": "subscribe", "since_ns": 1.5}', "since_ns must be a non-negative integer"),
        (b'{"op": "subscribe", "devices": [1]}', "devices must be a list of strings"),
        (b'{"op": "subscribe", "devices": "cpu"}', "devices must be a list of strings"),
        (b'{"op": "\\ud800"}', "unknown op '\\ud800' (status, watch, unwatch, subscribe, stop, "
                               "ping)"),
    ]


def _ask(home: Path, frame: bytes) -> dict[str, object] | None:
    sock = connect_unix(home_mod.socket_path(home), 5.0)
    try:
        sock.sendall(frame + b"\n")
        return LineReader(sock, max_line=1 << 20).read_json()
    finally:
        sock.close()


def test_every_bad_frame_gets_its_error_and_the_daemon_survives(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    for frame, error in _frames(os.getpid()):
        assert _ask(home, frame) == {"ok": False, "error": error}, frame[:60]
    # Several bad frames on one connection: one reply each, in order, then a good one.
    sock = connect_unix(home_mod.socket_path(home), 5.0)
    reader = LineReader(sock)
    sock.sendall(b"[" * 100 + b"]" * 100 + b"\n\xff\n[]\n" + b'{"op": "ping"}\n')
    assert [reader.read_json() for _ in range(4)] == [
        {"ok": False, "error": DEPTH_ERROR},
        {"ok": False, "error": "bad request: not UTF-8 (byte 0)"},
        {"ok": False, "error": "bad request: expected a JSON object, got list"},
        {"ok": True, "pid": info.pid}]
    # Too long: one error line, then that connection (only) is closed.
    sock.sendall(b"[" * (MAX_LINE_BYTES + 10))
    assert reader.read_json() == {"ok": False, "error": "request line too long"}
    assert reader.readline() is None
    sock.close()
    st = status(home)
    assert st["pid"] == info.pid and pid_alive(info.pid)
    assert st["watched"] == [] and st["server"]["loop_errors"] == 0
    assert "Traceback" not in log_text(home)


@pytest.mark.slow
def test_random_frames_never_take_the_daemon_down(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    rng = random.Random(13)
    atoms = [b"[", b"]", b"{", b"}", b'"op"', b":", b",", b'"status"', b'"watch"', b'"pid"',
             b"1", b"-1", b"1e999", b"null", b"true", b'"\\u0000"', b"\xff", b"\xc3", b" "]
    sock = connect_unix(home_mod.socket_path(home), 5.0)
    reader = LineReader(sock)
    for _ in range(3000):
        frame = b"".join(rng.choice(atoms) for _ in range(rng.randint(1, 60)))
        if not frame.strip():
            continue  # a blank line is skipped without a reply
        sock.sendall(frame + b"\n")
        reply = reader.read_json()
        assert reply is not None and set(reply) >= {"ok"}, frame
        if reply.get("subscribed"):  # a valid subscribe by chance: start over
            sock.close()
            sock = connect_unix(home_mod.socket_path(home), 5.0)
            reader = LineReader(sock)
    sock.close()
    assert json.loads(json.dumps(status(home)))["pid"] == info.pid
    assert status(home)["server"]["loop_errors"] == 0


def test_half_a_frame_then_gone_is_forgotten(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    for tail in (b'{"op": "sta', b"[" * 5000, b"\xff" * 100):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(home_mod.socket_path(home)))
        sock.sendall(tail)
        sock.close()
    wait_for(lambda: status(home)["server"]["connections"] == 1, 5,
             "the half-frame connections to be closed")
    st = status(home)
    srv = st["server"]
    assert st["pid"] == info.pid and srv["loop_errors"] == 0
    assert srv["requests"] == srv["accepted"] - 3  # every connection but the 3 half frames
