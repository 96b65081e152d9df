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

Faults it survives (tests/faults): any bytes as a request (too long, not UTF-8, nested
deeper than wire.MAX_REQUEST_DEPTH, not JSON, not an object, wrong types) get one
`{"ok": false, "error": "bad request: ..."}` line and the loop goes on; an exception in
one connection's handling closes that connection only. Connections are capped at
`_MAX_CONNECTIONS`; at the cap a new one first evicts the longest-idle request connection,
and when every slot is a subscriber it still gets one answer on one of
`_RESERVED_CONNECTIONS` one-shot slots (a subscribe there is refused). With those busy
too, or out of file descriptors, the loop stops accepting until a connection closes:
newcomers wait in the kernel's backlog, answered late rather than dropped, so no client
concludes from a closed socket that no daemon runs. A client that
vanishes (closes, resets, leaves half a request) is closed on the next read or write.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from profiling.daemon.wire import MAX_LINE_BYTES, decode_request, message_line

log = logging.getLogger("profiling.daemon.server")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
"""Answers one request object with one reply object (ops other than subscribe)."""
ReplaySource = Callable[[int | None, set[str] | None], list[bytes]]
"""(since_ns, devices) -> the encoded ring samples a new subscriber gets first."""

_CHUNK = 64 * 1024
_DROP_REPORT_S = 1.0
_REQUEST_IDLE_S = 60.0
_ONE_SHOT_IDLE_S = 5.0
_MAX_CONNECTIONS = 256
"""Connections held at once (subscribers and request connections together)."""
_RESERVED_CONNECTIONS = 16
"""One-shot slots beyond the cap: one answer each, then closed (see the module docstring)."""
_EVICT_IDLE_S = 0.5
"""A request connection silent this long may be closed to make room at the cap."""
_ACCEPT_PAUSE_S = 0.2
"""How long accepting pauses when every slot is busy or descriptors run out."""


class _Conn:
    """One client connection: a request channel, or a subscription once it subscribed."""

    __slots__ = ("sock", "inbuf", "out", "subscribed", "queue", "control", "replay",
                 "dropped_total", "dropped_reported", "close_after_flush", "last_active",
                 "events", "devices", "one_shot")

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
        self.one_shot = False

    def idle(self) -> bool:
        """A request connection with nothing left to send (at most half a request read)."""
        return not (self.subscribed or self.out or self.close_after_flush)

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
        self._accept_paused_until: float | None = None
        self.frames_dropped = 0
        self.requests_served = 0
        """Request lines answered (subscriptions and bad requests included)."""
        self.connections_accepted = 0
        self.connections_evicted = 0
        """Idle request connections closed to make room for a new one at the cap."""
        self.accept_pauses = 0
        """Times accepting paused (every slot busy, or out of file descriptors)."""
        self.loop_errors = 0
        """Exceptions caught in the loop (each closed the connection it came from)."""

    # -- called from other threads ---------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def counters(self) -> dict[str, int]:
        """The loop's counters, for the daemon's status."""
        return {"connections": len(self._conns), "accepted": self.connections_accepted,
                "evicted": self.connections_evicted, "accept_pauses": self.accept_pauses,
                "requests": self.requests_served, "loop_errors": self.loop_errors}

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
            wake_at = next_house
            if self._accept_paused_until is not None:
                wake_at = min(wake_at, self._accept_paused_until)
            for key, mask in self._sel.select(max(0.0, wake_at - time.monotonic())):
                if key.data == "listen":
                    self._guarded(self._accept)
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    self._on_event(key.data, mask)
            self._guarded(self._fanout)
            now = time.monotonic()
            if self._accept_paused_until is not None and now >= self._accept_paused_until:
                self._accept_paused_until = None
                self._sel.register(self._listener, selectors.EVENT_READ, "listen")
            if now >= next_house:
                next_house = now + self._housekeeping_s
                self._guarded(self._report_drops)
                self._guarded(self._close_idle_requests)
                if self._housekeeping is not None:
                    self._guarded(self._housekeeping)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step of the loop; an exception is logged and the loop goes on."""
        try:
            step()
        except Exception:  # noqa: BLE001 - the loop must outlive any one bug
            self.loop_errors += 1
            log.exception("socket loop: %s failed", getattr(step, "__name__", step))

    def _on_event(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._on_readable(conn)
            if mask & selectors.EVENT_WRITE and conn.sock.fileno() in self._conns:
                self._flush(conn)
        except Exception:  # noqa: BLE001 - one connection's fault closes that one only
            self.loop_errors += 1
            log.exception("socket loop: connection failed; closing it")
            self._close(conn)

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
            if len(self._conns) >= _MAX_CONNECTIONS + _RESERVED_CONNECTIONS \
                    and self._evictable() is None:
                # Every slot busy: leave newcomers in the kernel's backlog, where they wait
                # (and time out) instead of being told by a closed socket that no daemon runs.
                self._pause_accept("every connection slot is busy")
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._evict_idle():
                        continue  # a descriptor is free again
                    self._pause_accept(f"accept failed: {e}")
                    return
                log.warning("accept failed: %s", e)
                return
            self.connections_accepted += 1
            sock.setblocking(False)
            conn = _Conn(sock)
            # At the cap: make room by closing an idle holder, else answer once on a reserved
            # slot (the module docstring says why).
            if len(self._conns) >= _MAX_CONNECTIONS:
                self._evict_idle()
            conn.one_shot = len(self._conns) >= _MAX_CONNECTIONS
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evictable(self) -> _Conn | None:
        """The longest-idle request connection, idle at least _EVICT_IDLE_S (a client
        between its connect and its request is spared), or None."""
        limit = time.monotonic() - _EVICT_IDLE_S
        idle = [c for c in self._conns.values() if c.idle() and c.last_active <= limit]
        return min(idle, key=lambda c: c.last_active) if idle else None

    def _evict_idle(self) -> bool:
        """Close the `_evictable` connection to make room; False when there is none."""
        conn = self._evictable()
        if conn is None:
            return False
        self._close(conn)
        self.connections_evicted += 1
        return True

    def _pause_accept(self, why: str) -> None:
        """Stop polling the listener for a moment (it would stay readable and spin the
        loop); resumed early when a connection closes. Pending clients wait in the backlog."""
        if self._accept_paused_until is None:
            self.accept_pauses += 1
            if self.accept_pauses == 1 or self.accept_pauses % 100 == 0:
                log.warning("%s; new connections wait (%d open, pause #%d)", why,
                            len(self._conns), self.accept_pauses)
            self._sel.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_S

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
        self.requests_served += 1
        if conn.one_shot:
            conn.close_after_flush = True  # a reserved slot: this answer, then room again
        try:
            req = decode_request(line)
        except ValueError as e:
            self._reply(conn, {"ok": False, "error": f"bad request: {e}"})
            return
        if req["op"] == "subscribe":
            if conn.one_shot:
                self._reply(conn, {"ok": False, "error": f"too many connections "
                                   f"({self.subscriber_count} subscribers); try again later"})
                return
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
        now = time.monotonic()
        for conn in list(self._conns.values()):
            idle_s = _ONE_SHOT_IDLE_S if conn.one_shot else _REQUEST_IDLE_S
            if not conn.subscribed and conn.last_active < now - idle_s:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0 and self._conns.pop(fd, None) is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            if self._accept_paused_until is not None:
                self._accept_paused_until = 0.0  # room again: resume on this loop pass
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
