"""Live samples from the profiling daemon: `subscribe` and the `Subscription` it returns,
and `DaemonError`, what every client call raises (re-exported by client.py)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

from profiling import home as home_mod
from profiling.daemon.wire import LineReader, connect_unix, message_line
from profiling.sample import Sample, SampleError


class DaemonError(Exception):
    """The profiling daemon could not be started, reached or stopped."""


def not_running(e: OSError) -> bool:
    """True when connecting failed because no daemon serves the socket."""
    return isinstance(e, (FileNotFoundError, ConnectionRefusedError, ConnectionResetError,
                          BrokenPipeError)) or e.errno in (errno.ENOTSOCK, errno.ECONNREFUSED)


class Subscription:
    """An iterator of live Samples from the daemon; close() ends it (from any thread).

    Iteration ends when the daemon closes the stream (`closed_reason` says why) or after
    close(). Frames the daemon dropped because this reader was slow are counted in
    `dropped_total`.
    """

    def __init__(self, sock: socket.socket, reader: LineReader, replay: int) -> None:
        self._sock = sock
        self._reader = reader
        self.replay = replay
        """How many ring samples the daemon replays before the live stream."""
        self.dropped_total = 0
        self.closed_reason: str | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        while True:
            if self._closed:
                raise StopIteration
            try:
                obj = self._reader.read_json()
            except TimeoutError as e:
                raise DaemonError("no data from the profiling daemon in time") from e
            except (OSError, ValueError) as e:
                if self._closed:
                    raise StopIteration from None
                self.close("error")
                raise DaemonError(f"the sample stream broke: {e}") from e
            if obj is None:
                self.close(self.closed_reason or "end of stream")
                raise StopIteration
            if "t_ns" in obj:
                try:
                    return Sample.from_dict(obj)
                except SampleError:
                    continue
            if "dropped_total" in obj:
                self.dropped_total = int(obj["dropped_total"])
            elif "closing" in obj:
                self.closed_reason = str(obj["closing"])

    def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self._closed = True
        if self.closed_reason is None:
            self.closed_reason = reason
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in another thread
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(home: Path | str | None = None, since_ns: int | None = None,
              devices: list[str] | None = None, timeout_s: float | None = None) -> Subscription:
    """Stream samples: first the daemon's ring samples with t_ns > since_ns (none when
    since_ns is None), then every new one.

    Args:
        home: data dir of the daemon.
        since_ns: replay the ring after this wall-clock time; None streams live only.
        devices: only these devices; all when None.
        timeout_s: raise DaemonError when no line arrives for this long (None waits).

    Raises:
        DaemonError: no daemon runs, or it refused the subscription.
    """
    path = home_mod.socket_path(Path(home).expanduser().absolute() if home is not None
                                else home_mod.data_dir())
    try:
        sock = connect_unix(path, 5.0)
    except OSError as e:
        if not_running(e):
            raise DaemonError(f"no profiling daemon is running for {path.parent}") from e
        raise DaemonError(f"cannot connect to the profiling daemon at {path}: {e}") from e
    try:
        sock.sendall(message_line({"op": "subscribe", "since_ns": since_ns, "devices": devices}))
        reader = LineReader(sock)
        reply = reader.read_json()
        if reply is None or not reply.get("ok"):
            raise DaemonError("the profiling daemon refused the subscription: "
                              f"{(reply or {}).get('error', 'connection closed')}")
        sock.settimeout(timeout_s)
    except (OSError, ValueError) as e:
        sock.close()
        raise DaemonError(f"cannot subscribe to the profiling daemon at {path}: {e}") from e
    except DaemonError:
        sock.close()
        raise
    return Subscription(sock, reader, int(reply.get("replay", 0)))
