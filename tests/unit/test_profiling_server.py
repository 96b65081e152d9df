"""The socket server on its own: requests, replay, and back-pressure on a slow subscriber."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profiling.daemon.server import SocketServer
from profiling.daemon.wire import LineReader, bind_unix, connect_unix, message_line


class Rig:
    def __init__(self, path: Path, queue_lines: int) -> None:
        self.path = path
        self.replayed: list[bytes] = [b'{"t_ns":1,"device":"cpu"}\n',
                                      b'{"t_ns":2,"device":"gpu0"}\n']
        self.requests: list[dict[str, Any]] = []
        self.server = SocketServer(bind_unix(path), self.handle, self.replay,
                                   queue_lines=queue_lines, housekeeping_s=0.05)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(req)
        if req["op"] == "boom":
            raise RuntimeError("bug")
        return {"ok": True, "echo": req["op"]}

    def replay(self, since_ns: int | None, devices: set[str] | None) -> list[bytes]:
        return [line for line in self.replayed
                if devices is None or json.loads(line)["device"] in devices]

    def connect(self) -> tuple[socket.socket, LineReader]:
        sock = connect_unix(self.path, 5.0)
        return sock, LineReader(sock)


@pytest.fixture
def rig() -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="srv") as d:
        r = Rig(Path(d) / "s.sock", queue_lines=50)
        yield r
        r.server.stop()
        r.thread.join(5)
        r.server.close("test over")


def test_requests_and_errors(rig: Rig) -> None:
    sock, reader = rig.connect()
    sock.sendall(message_line({"op": "status"}) + b"not json\n" + message_line([1]) +
                 message_line({"op": "boom"}))
    assert reader.read_json() == {"ok": True, "echo": "status"}
    assert "bad request" in reader.read_json()["error"]  # type: ignore[index]
    assert "bad request" in reader.read_json()["error"]  # type: ignore[index]
    assert "internal error" in reader.read_json()["error"]  # type: ignore[index]
    sock.sendall(b"x" * 70_000)
    assert "too long" in reader.read_json()["error"]  # type: ignore[index]
    assert reader.readline() is None  # closed after the error
    sock.close()


def test_subscribe_replays_then_streams_in_order(rig: Rig) -> None:
    sock, reader = rig.connect()
    sock.sendall(message_line({"op": "subscribe", "since_ns": 0, "devices": ["cpu"]}))
    head = reader.read_json()
    assert head is not None and head["subscribed"] and head["replay"] == 1
    assert reader.read_json() == {"t_ns": 1, "device": "cpu"}
    deadline = time.monotonic() + 5
    while rig.server.subscriber_count == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with rig.server.publish_lock:
        rig.server.publish([b'{"t_ns":3,"device":"cpu"}\n', b'{"t_ns":3,"device":"gpu0"}\n'])
    assert reader.read_json() == {"t_ns": 3, "device": "cpu"}  # gpu0 filtered out
    sock.close()
    deadline = time.monotonic() + 5
    while rig.server.subscriber_count:
        assert time.monotonic() < deadline, "closed subscriber not noticed"
        time.sleep(0.01)


def test_slow_subscriber_drops_frames_without_slowing_the_publisher(rig: Rig) -> None:
    sock, reader = rig.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(message_line({"op": "subscribe", "since_ns": None}))
    assert reader.read_json()["replay"] == 0  # type: ignore[index]
    while rig.server.subscriber_count == 0:
        time.sleep(0.01)
    line = b'{"t_ns":5,"device":"cpu","pad":"' + b"x" * 1000 + b'"}\n'
    start = time.perf_counter()
    for _ in range(3000):  # ~3 MB the reader does not read
        with rig.server.publish_lock:
            rig.server.publish([line])
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0  # never blocked on the socket
    time.sleep(0.3)
    assert rig.server.frames_dropped > 2000
    got, dropped_total = 0, 0
    sock.settimeout(5)
    while dropped_total == 0 or got < 10:
        obj = reader.read_json()
        assert obj is not None
        if "dropped_total" in obj:
            dropped_total = obj["dropped_total"]
        else:
            got += 1
    assert dropped_total == rig.server.frames_dropped
    sock.close()


def test_close_tells_subscribers_why(rig: Rig) -> None:
    sock, reader = rig.connect()
    sock.sendall(message_line({"op": "subscribe", "since_ns": None}))
    reader.read_json()
    while rig.server.subscriber_count == 0:
        time.sleep(0.01)
    rig.server.stop()
    rig.thread.join(5)
    rig.server.close("bye")
    sock.settimeout(5)
    assert reader.read_json() == {"closing": "bye"}
    assert reader.readline() is None
    rig.server = _Closed()  # type: ignore[assignment]


class _Closed:
    def stop(self) -> None: ...

    def close(self, reason: str) -> None: ...


def test_socket_path_longer_than_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "daemon.sock"
    assert len(str(path)) > 108
    listener = bind_unix(path)
    try:
        assert path.exists()
        client = connect_unix(path, 2.0)
        conn, _ = listener.accept()
        client.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()
        client.close()
    finally:
        listener.close()
