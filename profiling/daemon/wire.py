"""How samples and requests travel: the JSON line format and the unix-socket plumbing.

One encoding serves the spool files and the socket stream: a sample is the compact JSON of
`Sample.to_json()` plus a newline. `sample_line` produces exactly those bytes, faster (it
skips `dataclasses.asdict`, which costs about 30 us a sample); a test holds the two equal.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from profiling.sample import FIELD_NAMES, Sample

PROTOCOL_VERSION = 1
"""Bumped when a request or reply changes incompatibly; reported by `status`."""

MAX_LINE_BYTES = 64 * 1024
"""Longest request line the daemon accepts (and longest reply line a client expects)."""

MAX_REQUEST_DEPTH = 8
"""Deepest nesting of arrays and objects a request may have (requests are flat: 2 at most)."""

_SUN_PATH_MAX = 107
"""sockaddr_un.sun_path holds 108 bytes on Linux, one of them the terminating NUL."""

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def sample_line(sample: Sample) -> bytes:
    """`sample.to_json()` + newline, as bytes."""
    return (_dumps({name: getattr(sample, name) for name in FIELD_NAMES}) + "\n").encode()


def message_line(obj: Any) -> bytes:
    """A request or control message as one JSON line."""
    return (_dumps(obj) + "\n").encode()


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path the kernel accepts in sockaddr_un, even when `path` is longer than 107 bytes.

    A long path is reached through /proc/self/fd/<fd of its directory>/<name> (Linux), so a
    deep data dir (common on cluster file systems) still gets a working socket.
    """
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0)
    fd = os.open(path.parent, flags)
    try:
        short = f"/proc/self/fd/{fd}/{path.name}"
        if len(short) > _SUN_PATH_MAX or not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(f"socket path too long for a unix socket: {text}")
        yield short
    finally:
        os.close(fd)


def connect_unix(path: Path, timeout_s: float | None) -> socket.socket:
    """A connected stream socket; raises OSError (FileNotFoundError, ConnectionRefusedError).

    With a timeout, a unix-socket connect fails at once with EAGAIN while the server's
    accept backlog is full (a burst of clients); that is retried until `timeout_s`, so a
    busy daemon is waited for rather than taken for a missing one.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with _short_path(path) as addr:
            while True:
                try:
                    sock.connect(addr)
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        raise TimeoutError(f"the accept backlog of {path} stayed full") from None
                    time.sleep(0.005)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening stream socket bound at `path` (which must not exist)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as addr:
            sock.bind(addr)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def nesting_depth(line: bytes) -> int:
    """The deepest nesting of `[`/`{` in a JSON text, brackets inside strings left out."""
    depth = deepest = 0
    in_str = escaped = False
    for byte in line:
        if in_str:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_str = False
        elif byte == 0x22:
            in_str = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def decode_request(line: bytes, max_depth: int = MAX_REQUEST_DEPTH) -> dict[str, Any]:
    """One request line as a JSON object with a string "op".

    Never raises anything but ValueError, whatever the bytes: invalid UTF-8, nesting deeper
    than `max_depth` (checked before parsing, so a deeply nested frame cannot exhaust the
    parser's recursion), invalid JSON, a non-object or a missing op.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start})") from None
    # Counting brackets first costs nothing for a flat request; scan only when it could be deep.
    if line.count(b"[") + line.count(b"{") > max_depth and nesting_depth(line) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        req = json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise ValueError("nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(req, dict):
        raise ValueError(f"expected a JSON object, got {type(req).__name__}")
    if not isinstance(req.get("op"), str):
        raise ValueError("expected a JSON object with an 'op' string")
    return req


class LineReader:
    """Reads newline-terminated lines from a blocking socket, with a length limit."""

    def __init__(self, sock: socket.socket, max_line: int = MAX_LINE_BYTES) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._max = max_line

    def readline(self) -> bytes | None:
        """The next line without its newline; None at end of stream.

        Raises:
            OSError: socket errors, including TimeoutError when the socket has a timeout.
            ValueError: a line longer than the limit.
        """
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[:idx + 1]
                return line
            if len(self._buf) > self._max:
                raise ValueError(f"line longer than {self._max} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk

    def read_json(self) -> dict[str, Any] | None:
        """The next line parsed as a JSON object; None at end of stream."""
        line = self.readline()
        if line is None:
            return None
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        return obj
