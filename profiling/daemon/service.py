"""The profiling daemon: samples every device on a steady clock into a ring, the spool and
a unix-socket stream. One per data dir; started by `profiling.daemon.client.ensure_daemon`.

    python -m profiling.daemon.service --home DIR [--rate-hz 10] [--idle-exit-s 300]
                               [--backends auto] [--gpm-interval-s 0.1] [--simulate-gpu]

Why it is built this way:
- One daemon per data dir is enforced by an exclusive fcntl lock on `daemon.lock`, taken
  before the socket is bound: launchers that race each start a process, the losers see the
  winner answer on the socket and exit 0. The lock dies with its holder, so a socket file
  found by the lock holder is stale and is removed.
- Three threads, none waiting on another: the sampler (steady schedule on the monotonic
  clock, t_ns from the wall clock), the spool writer (disk may be slow or full) and the
  socket loop (clients may be slow). The sampler hands each tick over with a deque append.
- It exits by itself after `--idle-exit-s` with no live watched runner and no subscriber,
  so tests and forgotten sessions leave nothing running.
- Backends: `auto` runs the host backend (psutil, with RAPL power where readable) and NVML
  where it is available; each one that cannot start is skipped, and status says why
  ("nvml: unavailable: NVML shared library not found ..."). `--simulate-gpu` runs the
  simulated GPUs *instead of* NVML (never both: their device names would collide), and
  status then says `simulated: true`.
- Simulated GPUs reach only the runs that asked for them: a daemon started for one
  `--simulate-gpu` run outlives it, and a plain run or app started meanwhile must not be
  fed a GPU that does not exist. So the simulated backend is sampled only while a run that
  asked for it (`watch` with `simulate_gpu: true`) is watched; status lists those live runs
  in `simulated_runs`. A plain `client.ensure_daemon` replaces a simulating daemon with a
  real one when that list is empty; while a simulated run goes on it keeps it (the plain run
  gets no GPU samples; ingest never gives a plain run simulated ones). A simulated run whose
  daemon was so replaced before its runner's `watch` has no GPU samples, still `simulated`.
- A daemon killed or stopped mid-run is replaced by the next `client.ensure_daemon` (the
  dispatcher calls it as a watchdog); the new one reads the watch set its predecessor saved
  (watchfile.py) and keeps watching the runs that still run. Lost spool lines are counted,
  logged and recorded (losses.py); files are this user's only (umask 077, 0700 dirs).
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

from profiling import home as home_mod
from profiling.backends.base import Backend, BackendUnavailable, load_backend
from profiling.backends.host import watched_alive
from profiling.daemon.client import request
from profiling.daemon.config import DaemonConfig, make_private, parse_args, setup_logging
from profiling.daemon.identity import LOCK_FILE
from profiling.daemon.ring import Ring
from profiling.daemon.server import SocketServer
from profiling.daemon.spool import SpoolWriter, cleanup
from profiling.daemon.watching import Watches
from profiling.daemon.wire import PROTOCOL_VERSION, bind_unix, sample_line

log = logging.getLogger("profiling.daemon.service")

_LOCK_WAIT_S = 10.0
_CLEANUP_EVERY_S = 600.0
_ERROR_REPEAT_S = 60.0
_SPOOL_QUEUE_TICKS = 36_000


class Daemon:
    """The running daemon (one per process)."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.home = config.home
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_ns = time.time_ns()
        self.watches = Watches(self.home)
        self.watch_set = self.watches.watch_set
        self.sim_watch_set = self.watches.sim_watch_set  # runs that asked for simulated GPUs
        self.backends: list[Backend] = []
        self.devices: list[str] = []
        self.backend_states: dict[str, dict[str, Any]] = {}
        self.samples_taken = 0
        self.ticks = 0
        self.overruns = 0
        self.ticks_missed = 0
        self.backend_errors = 0
        self.spool_queue_dropped = 0
        self._queue_loss: list[int] | None = None  # [lines, first_t_ns, last_t_ns] to record
        self._queue_loss_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._lock_fd: int | None = None
        self._idle_since: float | None = time.monotonic()
        self._backend_failing: dict[str, float] = {}
        self._backend_last_error: dict[str, str] = {}
        # SimpleQueue (C, lock-free hand-off) costs less per tick than queue.Queue; its
        # bound is kept by hand in _tick.
        self._spool_q: queue.SimpleQueue[list[tuple[int, bytes]] | None] = queue.SimpleQueue()
        self.ring: Ring
        self.spool: SpoolWriter
        self.server: SocketServer

    # -- start -----------------------------------------------------------------------------

    def acquire_lock(self) -> bool:
        """Take the per-home lock; False when another live daemon holds it and answers."""
        path = self.home / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except BlockingIOError:
                pass
            # Held: a daemon is running or starting (or exiting). Answering means running.
            try:
                st = request(self.home, {"op": "status"}, timeout_s=0.5)
            except Exception:  # noqa: BLE001 - any failure just means "not answering yet"
                st = None
            if st and st.get("ok"):
                log.info("another daemon (pid %s) already serves %s; exiting", st.get("pid"),
                         self.home)
                os.close(fd)
                return False
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RuntimeError(f"{path} is locked by a process that does not answer on "
                                   f"the socket (pid file says {self._pid_from_file()})")
            time.sleep(0.05)

    def _pid_from_file(self) -> str:
        try:
            return (self.home / home_mod.DAEMON_PID_FILE).read_text().strip()
        except OSError:
            return "nothing"

    def start(self) -> None:
        """Build backends, ring, spool and socket; start the sampler and spool threads."""
        cfg = self.config
        for name in self.config.backend_names():
            if name == "nvml" and cfg.simulate_gpu:
                self.backend_states[name] = {
                    "state": "skipped",
                    "reason": "--simulate-gpu: simulated GPUs replace real ones (stop this "
                              "daemon and start one without it for real readings)"}
                log.warning("nvml skipped: running simulated GPUs (--simulate-gpu)")
                continue
            watch_set = self.sim_watch_set if name == "simulated" else self.watch_set
            try:
                options = self.config.backend_options(name, self.host)
                backend = load_backend(name, watch_set, **options)
            except BackendUnavailable as e:
                log.warning("backend %s unavailable: %s", name, e)
                self.backend_states[name] = {"state": "unavailable", "reason": f"{e}"}
                continue
            except Exception as e:  # noqa: BLE001 - one broken backend must not stop the rest
                log.exception("backend %s failed to start", name)
                self.backend_states[name] = {"state": "unavailable",
                                             "reason": f"{type(e).__name__}: {e}"}
                continue
            self.backends.append(backend)
            self.devices.extend(backend.devices())
            self.backend_states[name] = {"state": "ok", "reason": None}
        if not self.backends:
            raise RuntimeError("no sampling backend could start: " + "; ".join(
                f"{n}: {st['reason']}" for n, st in self.backend_states.items()))
        n_dev = max(1, len(self.devices))
        self.ring = Ring.for_duration(cfg.ring_s, cfg.rate_hz, n_dev)
        self.spool = SpoolWriter(home_mod.spool_dir(self.home), max_bytes=cfg.spool_max_bytes,
                                 max_age_s=cfg.spool_max_age_s, retry_s=cfg.spool_retry_s,
                                 backlog_lines=self.ring.capacity)
        self.watches.backends = self.backends
        self.watches.simulated = self.simulated
        self.watches.restore()
        sock_path = home_mod.socket_path(self.home)
        if os.path.lexists(sock_path):
            # We hold the lock, so whoever bound it is gone.
            log.info("removing stale socket %s", sock_path)
            sock_path.unlink()
        listener = bind_unix(sock_path)
        os.chmod(sock_path, 0o600)
        self.server = SocketServer(
            listener, self._handle, self._replay,
            queue_lines=max(256, int(cfg.queue_s * cfg.rate_hz * n_dev)),
            housekeeping=self._housekeeping)
        pid_path = self.home / home_mod.DAEMON_PID_FILE
        tmp = pid_path.with_name(pid_path.name + ".tmp")
        tmp.write_text(f"{self.pid}\n")
        os.replace(tmp, pid_path)
        self._threads = [threading.Thread(target=self._sample_loop, name="sampler", daemon=True),
                         threading.Thread(target=self._spool_loop, name="spool", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("started pid %d on %s: %s at %g Hz, devices %s, idle exit %s", self.pid,
                 self.home, ",".join(b.name for b in self.backends), cfg.rate_hz,
                 ",".join(self.devices),
                 f"{cfg.idle_exit_s:g} s" if cfg.idle_exit_s > 0 else "off")
        log.info("backends: %s%s", "; ".join(self._backend_report()[1]),
                 " (SIMULATED GPUs)" if self.simulated else "")

    @property
    def simulated(self) -> bool:
        return any(b.name == "simulated" for b in self.backends)

    # -- run and stop ----------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason
        self._stop.set()
        self.server.stop()

    def serve(self) -> None:
        try:
            self.server.serve()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        reason = self._stop_reason or "shutdown"
        log.info("stopping: %s", reason)
        self._stop.set()
        sock_path = home_mod.socket_path(self.home)
        try:
            sock_path.unlink()  # first, so new clients start a new daemon instead of waiting
        except FileNotFoundError:
            pass
        for t in self._threads:
            if t.name == "sampler":
                t.join(timeout=5)
        self.server.close(reason)
        self._spool_q.put(None)
        for t in self._threads:
            if t.name == "spool":
                t.join(timeout=10)
        for backend in self.backends:
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                log.exception("closing backend %s failed", backend.name)
        pid_path = self.home / home_mod.DAEMON_PID_FILE
        if self._pid_from_file() == str(self.pid):
            pid_path.unlink(missing_ok=True)
        log.info("stopped after %d samples (%s)", self.samples_taken, reason)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock; the file stays (deleting it races)
            self._lock_fd = None

    # -- sampling (sampler thread) ---------------------------------------------------------

    def _sample_loop(self) -> None:
        period = 1.0 / self.config.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - sampling must outlive any one bad tick
                log.exception("tick failed")
            next_t += period
            now = time.monotonic()
            if now >= next_t + period:
                # Late by a whole period or more (suspend, overload): skip the missed ticks
                # rather than firing them back to back.
                missed = int((now - next_t) / period)
                self.overruns += 1
                self.ticks_missed += missed
                next_t += missed * period
            self._stop.wait(max(0.0, next_t - now))

    def _tick(self) -> None:
        now_ns = time.time_ns()
        samples = []
        for backend in self.backends:
            if backend.name == "simulated" and not len(self.sim_watch_set):
                continue  # no run asked for simulated GPUs: none is shown (docstring)
            try:
                samples.extend(backend.sample(now_ns))
            except Exception as e:  # noqa: BLE001 - one backend must not stop the others
                self._backend_failed(backend, e)
            else:
                if backend.name in self._backend_failing:
                    del self._backend_failing[backend.name]
                    log.warning("backend %s works again", backend.name)
        self.ticks += 1
        if not samples:
            return
        lines = [sample_line(s) for s in samples]
        with self.server.publish_lock:
            self.ring.extend(samples, lines)
            self.server.publish(lines)
        self.samples_taken += len(samples)
        if self._spool_q.qsize() < _SPOOL_QUEUE_TICKS:
            self._spool_q.put([(s.t_ns, ln) for s, ln in zip(samples, lines, strict=True)])
        else:  # the spool thread is stuck (hung file system): the ring still has them
            self.spool_queue_dropped += len(samples)
            with self._queue_loss_lock:
                if self._queue_loss is None:
                    self._queue_loss = [0, now_ns, now_ns]
                self._queue_loss[0] += len(samples)
                self._queue_loss[2] = now_ns

    def _backend_failed(self, backend: Backend, e: Exception) -> None:
        self.backend_errors += 1
        self._backend_last_error[backend.name] = f"{type(e).__name__}: {e}"
        now = time.monotonic()
        last = self._backend_failing.get(backend.name)
        if last is None:
            log.error("backend %s failed: %s: %s", backend.name, type(e).__name__, e,
                      exc_info=True)
            self._backend_failing[backend.name] = now
        elif now - last >= _ERROR_REPEAT_S:
            log.error("backend %s still failing: %s: %s", backend.name, type(e).__name__, e)
            self._backend_failing[backend.name] = now

    # -- spool (spool thread) --------------------------------------------------------------

    def _spool_loop(self) -> None:
        next_cleanup = time.monotonic()
        while True:
            item = self._spool_q.get()
            batch: list[tuple[int, bytes]] = []
            done = item is None
            if item is not None:
                batch.extend(item)
            while not done:  # take whatever else is waiting: one write for all of it
                try:
                    more = self._spool_q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    batch.extend(more)
            if self._queue_loss is not None:
                with self._queue_loss_lock:
                    lost, self._queue_loss = self._queue_loss, None
                if lost is not None:
                    self.spool.note_loss(lost[0], lost[1], lost[2],
                                         "the spool writer was stuck (hung file system?) and "
                                         f"{_SPOOL_QUEUE_TICKS} ticks were waiting for it")
            if batch or self.spool.losses.pending:
                self.spool.write(batch)
            if self.config.retention_s > 0 and time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + _CLEANUP_EVERY_S
                self._cleanup()
            if done:
                break
        self.spool.close()

    def _cleanup(self) -> None:
        cutoff = time.time_ns() - int(self.config.retention_s * 1e9)
        try:
            removed = cleanup(self.spool.spool_dir, cutoff)
        except OSError as e:
            log.warning("spool cleanup failed: %s", e)
            return
        if removed:
            log.info("spool cleanup removed %d segments older than %g h", len(removed),
                     self.config.retention_s / 3600)

    # -- requests (socket thread) ----------------------------------------------------------

    def _replay(self, since_ns: int | None, devices: set[str] | None) -> list[bytes]:
        return self.ring.snapshot_lines(since_ns, devices)

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "status":
            return self.status()
        if op == "ping":
            return {"ok": True, "pid": self.pid}
        if op in ("watch", "unwatch"):
            pid = req.get("pid")
            return (self.watches.watch(pid, req.get("run_id"), req.get("simulate_gpu", False))
                    if op == "watch" else self.watches.unwatch(pid))
        if op == "stop":
            log.info("stop requested over the socket")
            self.request_stop("stop requested")
            return {"ok": True, "stopping": True, "pid": self.pid}
        return {"ok": False, "error": f"unknown op {op!r} (status, watch, unwatch, subscribe, "
                                      "stop, ping)"}

    def _backend_report(self) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
        """(state of each backend, one line each, lost devices)."""
        states: dict[str, dict[str, Any]] = {}
        lost: list[str] = []
        by_name = {b.name: b for b in self.backends}
        for name, base in self.backend_states.items():
            st = dict(base)
            backend = by_name.get(name)
            if backend is not None:
                if name in self._backend_failing:
                    st["state"] = "failing"
                    st["reason"] = self._backend_last_error.get(name)
                try:
                    st.update(backend.status())
                    gone = backend.lost_devices()
                except Exception as e:  # noqa: BLE001 - status must always answer
                    st["status_error"] = f"{type(e).__name__}: {e}"
                    gone = []
                lost.extend(gone)
                if gone and st["state"] == "ok":
                    st["state"] = "degraded"
                    st["reason"] = f"lost {', '.join(gone)}"
            states[name] = st
        lines = [f"{n}: {st['state']}" + (f": {st['reason']}" if st.get("reason") else "")
                 for n, st in states.items()]
        return states, lines, lost

    def status(self) -> dict[str, Any]:
        cpu = os.times()
        states, lines, lost = self._backend_report()
        idle_for = (time.monotonic() - self._idle_since) if self._idle_since is not None else 0.0
        return {
            "ok": True, "protocol": PROTOCOL_VERSION, "pid": self.pid, "host": self.host,
            "home": str(self.home), "rate_hz": self.config.rate_hz,
            "started_ns": self.started_ns, "uptime_s": (time.time_ns() - self.started_ns) / 1e9,
            "devices": list(self.devices), "backends": [b.name for b in self.backends],
            "watched": [w.to_dict() for w in self.watch_set.entries()],
            "subscribers": self.server.subscriber_count,
            "spool_dir": str(self.spool.spool_dir), "spool": self.spool.status(),
            "samples_taken": self.samples_taken, "ticks": self.ticks,
            "overruns": self.overruns, "ticks_missed": self.ticks_missed,
            "backend_errors": self.backend_errors, "frames_dropped": self.server.frames_dropped,
            "spool_queue_dropped": self.spool_queue_dropped,
            "ring": {"capacity": self.ring.capacity, "size": len(self.ring)},
            "idle_exit_s": self.config.idle_exit_s, "idle_for_s": round(idle_for, 3),
            "cpu_time_s": cpu.user + cpu.system,
            "simulated": self.simulated, "backend_states": states, "backend_notes": lines,
            "simulated_runs": [w.run_id or str(w.pid) for w in self.sim_watch_set.entries()
                               if watched_alive(w)],
            "lost_devices": lost, "gpm_interval_s": self.config.gpm_interval_s,
            "server": self.server.counters(),
        }

    def _housekeeping(self) -> None:
        """Once a second on the socket thread: forget dead runners, idle exit."""
        self.watches.prune()
        busy = len(self.watch_set) > 0 or self.server.subscriber_count > 0
        now = time.monotonic()
        if busy:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif self.config.idle_exit_s > 0 and now - self._idle_since >= self.config.idle_exit_s:
            self.request_stop(f"idle for {self.config.idle_exit_s:g} s")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    os.umask(0o077)  # socket, pid file, spool and log: this user only
    try:
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chdir(config.home)  # hold no launcher directory busy
    except OSError as e:
        print(f"profiling daemon: cannot use data dir {config.home}: {e}", file=sys.stderr)
        return 1
    opened = make_private(config.home)  # what an older version or a umask left open
    setup_logging(config.home)
    if opened:
        log.info("made private (this user only): %s", ", ".join(p.name for p in opened))
    daemon = Daemon(config)
    try:
        if not daemon.acquire_lock():
            return 0
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        daemon.start()
    except Exception as e:  # noqa: BLE001 - report any start failure as one log line
        log.error("cannot start: %s", e, exc_info=not isinstance(e, (OSError, RuntimeError)))
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
