"""The daemon's unix-socket server: line-delimited JSON requests and sample subscriptions.

One thread runs a selector loop over non-blocking sockets, so no client can stall another
or the sampler. The sampling thread only hands each tick's encoded lines to `publish` (a
deque append and, when someone subscribes, one byte on a wake-up pipe). Each subscriber
has a bounded queue: when it reads too slowly the oldest frames are dropped, counted, and
reported to it in a `{"dropped": n, "dropped_total": N}` line about once a second.
Sampling and the spool never wait for a subscriber.

Protocol (one JSON object a line, both ways; every request gets exactly one reply line
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`; several requests may share a
connection):
    {"op": "status"}                       -> pid, host, home, protocol, rate_hz, started_ns,
                                              devices, backends, watched, subscribers,
                                              spool_dir, spool, samples_taken, ticks, ...
    {"op": "watch", "pid": N, "run_id": S} -> {"ok": true, "watched": [...]}; ok false when
                                              no such process
    {"op": "unwatch", "pid": N}            -> {"ok": true, "was_watched": bool}
    {"op": "ping"}                         -> {"ok": true, "pid": N}
    {"op": "stop"}                         -> {"ok": true, "stopping": true}; then it exits
    {"op": "subscribe", "since_ns": T|null, "devices": [..]|null}
        -> {"ok": true, "subscribed": true, "replay": n, "queue_lines": q}, then the ring's
           samples with t_ns > T (none when T is null), then every new sample, each as the
           line of Sample.to_json(). Control lines have no "t_ns":
           {"dropped": n, "dropped_total": N} and, when the daemon stops, {"closing": why}.
           Anything the client sends after subscribing is ignored; closing ends it.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from profiling.daemon.wire import MAX_LINE_BYTES, message_line

log = logging.getLogger("profiling.daemon.server")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
"""Answers one request object with one reply object (ops other than subscribe)."""
ReplaySource = Callable[[int | None, set[str] | None], list[bytes]]
"""(since_ns, devices) -> the encoded ring samples a new subscriber gets first."""

_CHUNK = 64 * 1024
_DROP_REPORT_S = 1.0
_REQUEST_IDLE_S = 60.0
_MAX_CONNECTIONS = 256


class _Conn:
    """One client connection: a request channel, or a subscription once it subscribed."""

    __slots__ = ("sock", "inbuf", "out", "subscribed", "queue", "control", "replay",
                 "dropped_total", "dropped_reported", "close_after_flush", "last_active",
                 "events", "devices")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out = bytearray()
        self.subscribed = False
        self.queue: deque[bytes] = deque()
        self.control: deque[bytes] = deque()
        self.replay: deque[bytes] = deque()
        self.dropped_total = 0
        self.dropped_reported = 0
        self.close_after_flush = False
        self.last_active = time.monotonic()
        self.events = selectors.EVENT_READ
        self.devices: set[str] | None = None

    def has_pending(self) -> bool:
        return bool(self.out or self.control or self.replay or self.queue)


class SocketServer:
    """Serves one listening unix socket until `stop()`."""

    def __init__(self, listener: socket.socket, handler: Handler, replay: ReplaySource, *,
                 queue_lines: int = 4096, housekeeping: Callable[[], None] | None = None,
                 housekeeping_s: float = 1.0) -> None:
        self._listener = listener
        self._listener.setblocking(False)
        self._handler = handler
        self._replay = replay
        self._queue_lines = max(1, queue_lines)
        self._housekeeping = housekeeping
        self._housekeeping_s = housekeeping_s
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: dict[int, _Conn] = {}
        self._subs: list[_Conn] = []
        self._published: deque[list[bytes]] = deque(maxlen=1024)
        self._unsent_frames = 0
        self.publish_lock = threading.RLock()
        """Held by the sampler across 'append to the ring' + publish(), and by a new
        subscription across 'drain published ticks' + replay, so a subscriber sees every
        sample exactly once."""
        self._stop = threading.Event()
        self.frames_dropped = 0

    # -- called from other threads ---------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, lines: list[bytes]) -> None:
        """Queue one tick's lines for the subscribers (call under publish_lock)."""
        if self._subs:
            if len(self._published) == self._published.maxlen:
                # The socket thread is far behind (an overloaded host): the oldest tick
                # goes, and is counted as dropped for every subscriber.
                self._unsent_frames += len(self._published.popleft())
            self._published.append(lines)
            self.wake()

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake already

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    # -- the loop (one thread) -------------------------------------------------------------

    def serve(self) -> None:
        next_house = time.monotonic() + self._housekeeping_s
        while not self._stop.is_set():
            timeout = max(0.0, next_house - time.monotonic())
            for key, mask in self._sel.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    conn = key.data
                    if mask & selectors.EVENT_READ:
                        self._on_readable(conn)
                    if mask & selectors.EVENT_WRITE and conn.sock.fileno() in self._conns:
                        self._flush(conn)
            self._fanout()
            if time.monotonic() >= next_house:
                next_house = time.monotonic() + self._housekeeping_s
                self._report_drops()
                self._close_idle_requests()
                if self._housekeeping is not None:
                    self._housekeeping()

    def close(self, reason: str) -> None:
        """Tell subscribers why the stream ends, flush what fits, close everything."""
        self._fanout()
        for conn in list(self._conns.values()):
            if conn.subscribed:
                conn.queue.clear()
                conn.replay.clear()
                conn.control.append(message_line({"closing": reason}))
            self._flush(conn)
            self._close(conn)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._sel.close()

    # -- connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            if len(self._conns) >= _MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        if conn.subscribed or conn.close_after_flush:
            return  # a subscription is one-way after the request
        conn.inbuf += data
        while not conn.subscribed and not conn.close_after_flush:
            idx = conn.inbuf.find(b"\n")
            if idx < 0:
                if len(conn.inbuf) > MAX_LINE_BYTES:
                    self._reply(conn, {"ok": False, "error": "request line too long"})
                    conn.close_after_flush = True
                break
            line = bytes(conn.inbuf[:idx])
            del conn.inbuf[:idx + 1]
            if line.strip():
                self._on_request(conn, line)
        self._flush(conn)

    def _on_request(self, conn: _Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("expected a JSON object with an 'op'")
        except ValueError as e:
            self._reply(conn, {"ok": False, "error": f"bad request: {e}"})
            return
        if req["op"] == "subscribe":
            self._subscribe(conn, req)
            return
        try:
            reply = self._handler(req)
        except Exception as e:  # a bug in one op must not take the daemon down
            log.exception("request %r failed", req.get("op"))
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        self._reply(conn, reply)

    def _reply(self, conn: _Conn, obj: dict[str, Any]) -> None:
        conn.out += message_line(obj)

    def _subscribe(self, conn: _Conn, req: dict[str, Any]) -> None:
        since = req.get("since_ns")
        devices = req.get("devices")
        if since is not None and (type(since) is not int or since < 0):
            self._reply(conn, {"ok": False, "error": "since_ns must be a non-negative integer"})
            return
        if devices is not None and (not isinstance(devices, list)
                                    or not all(isinstance(d, str) for d in devices)):
            self._reply(conn, {"ok": False, "error": "devices must be a list of strings"})
            return
        conn.devices = set(devices) if devices is not None else None
        with self.publish_lock:
            self._fanout_locked()
            replay = self._replay(since, conn.devices) if since is not None else []
            conn.subscribed = True
            self._subs.append(conn)
        conn.inbuf.clear()
        self._reply(conn, {"ok": True, "subscribed": True, "replay": len(replay),
                           "queue_lines": self._queue_lines})
        conn.replay.extend(replay)

    def _fanout(self) -> None:
        if self._published:
            with self.publish_lock:
                self._fanout_locked()

    def _fanout_locked(self) -> None:
        ticks = list(self._published)
        self._published.clear()
        unsent, self._unsent_frames = self._unsent_frames, 0
        if not ticks and not unsent:
            return
        for conn in list(self._subs):
            conn.dropped_total += unsent
            self.frames_dropped += unsent
            q = conn.queue
            for lines in ticks:
                for line in lines:
                    if conn.devices is not None and not _line_device_in(line, conn.devices):
                        continue
                    if len(q) >= self._queue_lines:
                        q.popleft()
                        conn.dropped_total += 1
                        self.frames_dropped += 1
                    q.append(line)
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        """Send what the socket takes now; watch for writability when it takes less."""
        while True:
            if not conn.out:
                self._refill(conn)
                if not conn.out:
                    break
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.out[:sent]
            if conn.out:
                break
        if conn.close_after_flush and not conn.out:
            self._close(conn)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if want != conn.events:
            conn.events = want
            self._sel.modify(conn.sock, want, conn)

    def _refill(self, conn: _Conn) -> None:
        out = conn.out
        for source in (conn.control, conn.replay, conn.queue):
            while source and len(out) < _CHUNK:
                out += source.popleft()
            if len(out) >= _CHUNK:
                return

    def _report_drops(self) -> None:
        for conn in self._subs:
            new = conn.dropped_total - conn.dropped_reported
            if new:
                conn.dropped_reported = conn.dropped_total
                conn.control.append(message_line({"dropped": new,
                                                  "dropped_total": conn.dropped_total}))
                self._flush(conn)

    def _close_idle_requests(self) -> None:
        limit = time.monotonic() - _REQUEST_IDLE_S
        for conn in list(self._conns.values()):
            if not conn.subscribed and conn.last_active < limit:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0 and self._conns.pop(fd, None) is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        if conn in self._subs:
            with self.publish_lock:
                self._subs.remove(conn)
        conn.sock.close()


def _line_device_in(line: bytes, devices: set[str]) -> bool:
    """Device filter for an encoded sample line, without a full parse."""
    for dev in devices:
        if b'"device":"' + dev.encode() + b'"' in line:
            return True
    return False
