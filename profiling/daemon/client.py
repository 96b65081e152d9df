"""Talking to the profiling daemon: start it if absent, ask it things, stream its samples.

Everything takes the data dir (`home`; the default data dir when None) and finds the socket
inside it. The daemon is started detached: its own session, stdin from /dev/null, output
appended to `daemon.log`, so no caller ever holds a pipe to it and closing a terminal does
not stop it. `watch`/`unwatch` are best effort (a run must not fail because live profiling
is off); the others raise DaemonError with a message that says what to look at.

`ensure_daemon` doubles as a watchdog: with a daemon running it costs one status round
trip (plus one `watch` for each given runner the daemon does not list), so a dispatcher
may call it every few seconds while runs go on; a daemon killed or stopped mid-run is then
replaced, and the new one watches the same runners (see watching.py). `stop_daemon` signals
only a process proven to be this home's daemon (identity.py); a stale pid file naming
anything else is removed with a note, and that process is left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from profiling import home as home_mod
from profiling.daemon.identity import (
    LOCK_FILE,
    daemon_process,
    lock_held,
    pid_file_daemon,
    remove_pid_file,
)
from profiling.daemon.stream import DaemonError, Subscription, not_running, subscribe
from profiling.daemon.wire import LineReader, connect_unix, message_line

log = logging.getLogger("profiling.daemon.client")
_LOG_ROTATE_BYTES = 1024 * 1024
_spawned: list[subprocess.Popen[bytes]] = []
"""Daemons this process launched; polled now and then so none stays a zombie."""


@dataclass(frozen=True, slots=True)
class RunnerWatch:
    """A running runner the daemon must watch (what `ensure_daemon(watches=...)` takes)."""

    pid: int
    """Process id of the runner."""
    run_id: str | None = None
    """The run it executes."""
    simulate_gpu: bool = False
    """The run asked for simulated GPUs."""


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """A running daemon, as its status reply describes it."""

    pid: int
    """Process id of the daemon."""
    home: Path
    """Its data dir."""
    socket_path: Path
    """The unix socket it serves."""
    rate_hz: float
    """Sampling rate (that of the running daemon, which may differ from the one asked for)."""
    started_ns: int
    """Wall clock when it started."""
    devices: tuple[str, ...]
    """Devices it samples."""
    backends: tuple[str, ...]
    """Backends it runs."""
    launched: bool
    """True when this call started the daemon that runs (a losing racer's is False)."""
    status: dict[str, Any] = field(default_factory=dict)
    """The full status reply."""
    simulated: bool = False
    """True when the daemon runs simulated GPUs (its GPU samples are labelled so)."""


def _home(home: Path | str | None) -> Path:
    return Path(home).expanduser().absolute() if home is not None else home_mod.data_dir()


__all__ = ["LOCK_FILE", "DaemonError", "Subscription", "subscribe"]  # re-exported


def request(home: Path | str | None, req: dict[str, Any],
            timeout_s: float = 2.0) -> dict[str, Any] | None:
    """Send one request and return the daemon's reply; None when no daemon is running.

    Raises:
        DaemonError: the socket exists but the daemon does not answer properly.
    """
    path = home_mod.socket_path(_home(home))
    try:
        sock = connect_unix(path, timeout_s)
    except OSError as e:
        if not_running(e):
            return None
        raise DaemonError(f"cannot connect to the profiling daemon at {path}: {e}") from e
    try:
        sock.sendall(message_line(req))
        reply = LineReader(sock).read_json()
    except TimeoutError as e:
        raise DaemonError(f"the profiling daemon at {path} did not answer within "
                          f"{timeout_s:g} s") from e
    except OSError as e:
        if not_running(e):
            return None  # it was shutting down
        raise DaemonError(f"lost the profiling daemon at {path}: {e}") from e
    except ValueError as e:
        raise DaemonError(f"the profiling daemon at {path} sent a bad reply: {e}") from e
    finally:
        sock.close()
    return reply


def daemon_status(home: Path | str | None = None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The daemon's status reply, or None when none runs (a stale socket counts as none)."""
    _reap()
    reply = request(home, {"op": "status"}, timeout_s)
    if reply is None:
        return None
    if not reply.get("ok"):
        raise DaemonError(f"status request failed: {reply.get('error')}")
    return reply


def _info(st: dict[str, Any], home: Path, launched: bool) -> DaemonInfo:
    return DaemonInfo(pid=int(st["pid"]), home=home, socket_path=home_mod.socket_path(home),
                      rate_hz=float(st["rate_hz"]), started_ns=int(st["started_ns"]),
                      devices=tuple(st.get("devices", ())), backends=tuple(st.get("backends", ())),
                      launched=launched, status=st, simulated=bool(st.get("simulated")))


SIMULATE_ENV = "EFFICIENTLLM_SIMULATE_GPU"


def simulate_gpu_from_env(env: dict[str, str] | None = None) -> bool | None:
    """EFFICIENTLLM_SIMULATE_GPU as a choice: True (1/true/yes/on), False (any other value),
    None when unset (no preference)."""
    value = (os.environ if env is None else env).get(SIMULATE_ENV)
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def _check_simulation(st: dict[str, Any], home: Path, want: bool | None) -> bool:
    """Whether the running daemon serves a caller that wants `want` (True: simulated GPUs,
    False: real ones, None: no preference); False means replace it with a real one.

    A simulating daemon is replaced for a caller that did not ask for simulation once no
    simulated run is watched (profiling.daemon.service's docstring says why).

    Raises:
        DaemonError: It cannot serve the caller and must not be replaced.
    """
    running = bool(st.get("simulated"))
    if want == running or (want is None and not running):
        return True
    pid = st.get("pid")
    if running and not st.get("simulated_runs"):
        return False
    if want is None:
        return True  # a simulated run goes on: keep its daemon; only that run gets GPU data
    if want:
        raise DaemonError(
            f"a profiling daemon with real GPU sampling (pid {pid}) already serves {home}; "
            "simulated GPUs were asked for but are not mixed with real ones: stop it "
            "(`efficientllm daemon stop`) to simulate")
    raise DaemonError(
        f"the profiling daemon serving {home} (pid {pid}) runs simulated GPUs; real GPU "
        "sampling was asked for: stop it (`efficientllm daemon stop`) and start again "
        f"without --simulate-gpu / {SIMULATE_ENV}")


def ensure_daemon(home: Path | str | None = None, rate_hz: float = 10.0,
                  idle_exit_s: float = 300.0, timeout_s: float = 5.0, *,
                  simulate_gpu: bool | None = None,
                  gpm_interval_s: float | None = None,
                  watches: Sequence[RunnerWatch] = ()) -> DaemonInfo:
    """Return the running daemon of `home`, starting one when there is none.

    Cheap enough for a watchdog: with the daemon running and every runner in `watches`
    already watched it is one status round trip.

    Safe to call from many processes at once: the daemon takes a lock before it binds its
    socket, so racing launches leave exactly one daemon. A daemon already running keeps its
    own rate and idle timeout.

    Args:
        simulate_gpu: True runs simulated GPUs in place of NVML, False real ones only;
            None takes $EFFICIENTLLM_SIMULATE_GPU, and when that is unset too starts a real
            one. A simulating daemon with no simulated run watched is replaced by a real one
            unless True; with one, None keeps it (its simulated GPUs reach that run only)
            and False raises DaemonError. A real daemon raises DaemonError for True:
            simulated and real samples are never mixed silently.
        gpm_interval_s: seconds between GPM samples for a daemon started here.
        watches: runners that must be watched (e.g. the running runs, whose first daemon
            may have died): each one the daemon does not list is watched (`rewatch`).
    """
    home = _home(home)
    if simulate_gpu is None:
        simulate_gpu = simulate_gpu_from_env()
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    proc: subprocess.Popen[bytes] | None = None
    launches = replaced = 0
    while True:
        st = daemon_status(home, timeout_s=max(0.2, min(2.0, deadline - time.monotonic())))
        if st is not None and not _check_simulation(st, home, simulate_gpu):
            if replaced >= 3:
                raise DaemonError(f"a simulating profiling daemon keeps coming back in {home}; "
                                  "stop it (`efficientllm daemon stop`)")
            stop_daemon(home, timeout_s=timeout_s)
            replaced += 1
            deadline = time.monotonic() + timeout_s  # the real one gets the whole time to start
            continue
        if st is not None:
            _watch_missing(home, st, watches)
            # Several launchers may race; only the one whose process won did launch it.
            return _info(st, home, launched=proc is not None and st.get("pid") == proc.pid)
        if proc is None or proc.poll() is not None:
            if proc is not None and proc.returncode != 0:
                raise DaemonError(f"the profiling daemon exited with code {proc.returncode}"
                                  f"{_log_tail(home)}")
            if launches >= 3:
                raise DaemonError(f"the profiling daemon keeps exiting{_log_tail(home)}")
            proc = _spawn(home, rate_hz, idle_exit_s, bool(simulate_gpu), gpm_interval_s)
            launches += 1
        if time.monotonic() >= deadline:
            raise DaemonError(f"the profiling daemon did not start within {timeout_s:g} s"
                              f"{_log_tail(home)}")
        time.sleep(0.02)


def _watch_missing(home: Path, st: dict[str, Any], watches: Sequence[RunnerWatch]) -> None:
    """Watch each runner of `watches` that the daemon's status `st` does not list."""
    if not watches:
        return
    listed = {(w.get("pid"), w.get("run_id")) for w in st.get("watched", ())
              if isinstance(w, dict)}
    sim_runs = set(st.get("simulated_runs", ()))
    for w in watches:
        sim_missing = (w.simulate_gpu and st.get("simulated")
                       and (w.run_id or str(w.pid)) not in sim_runs)
        if (w.pid, w.run_id) not in listed or sim_missing:
            if rewatch(home, w.pid, w.run_id, w.simulate_gpu):
                log.info("the profiling daemon (pid %s) watches runner %d (run %s) again",
                         st.get("pid"), w.pid, w.run_id)


def _spawn(home: Path, rate_hz: float, idle_exit_s: float, simulate_gpu: bool = False,
           gpm_interval_s: float | None = None) -> subprocess.Popen[bytes]:
    log_path = home / home_mod.DAEMON_LOG_FILE
    try:
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except OSError:
        pass
    env = dict(os.environ)
    # The daemon must import this very package, even from a source tree that is not installed.
    root = str(Path(__file__).resolve().parents[2])  # the source tree: profiling/daemon/ up two
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "profiling.daemon.service", "--home", str(home),
           "--rate-hz", repr(float(rate_hz)), "--idle-exit-s", repr(float(idle_exit_s)),
           "--simulate-gpu" if simulate_gpu else "--no-simulate-gpu"]
    if gpm_interval_s is not None:
        cmd += ["--gpm-interval-s", repr(float(gpm_interval_s))]
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "ab") as log_file:
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, close_fds=True,
                                start_new_session=True)
    _spawned.append(proc)
    return proc


def _reap() -> None:
    for proc in list(_spawned):
        if proc.poll() is not None:
            _spawned.remove(proc)


def _log_tail(home: Path, lines: int = 5) -> str:
    path = home / home_mod.DAEMON_LOG_FILE
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"; see {path}" + ("".join(f"\n  {line}" for line in text) if text else "")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie is dead; one that is our child gets reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def stop_daemon(home: Path | str | None = None, timeout_s: float = 5.0, *,
                note: Callable[[str], None] | None = None) -> bool:
    """Stop the daemon of `home`; True when one was running and is gone, False when none ran.

    Asks it to stop over the socket, then sends SIGTERM halfway through `timeout_s`. A
    daemon that does not answer is found through its pid file, and signalled only when
    /proc proves that pid is this home's daemon (identity.py): a stale pid file naming any
    other process is removed, that process is left alone, and `note` gets one line saying
    so (default: logged as a warning).

    Raises:
        DaemonError: it is still running after `timeout_s`, or something holds the daemon
            lock without answering and is not provably the daemon (nothing is signalled).
    """
    home = _home(home)
    say = note if note is not None else log.warning
    unanswered: DaemonError | None = None
    try:
        st = daemon_status(home, timeout_s=min(2.0, timeout_s))
    except DaemonError as e:
        st, unanswered = None, e
    if st is not None:
        pid = int(st["pid"])
        try:
            request(home, {"op": "stop"}, timeout_s=min(2.0, timeout_s))
        except DaemonError:
            pass
        return _wait_gone(home, pid, timeout_s, term_after_s=timeout_s / 2)
    file_pid, ours, why = pid_file_daemon(home)
    if file_pid is not None and ours:
        # It does not answer (hung, or its socket was removed), and it provably is ours.
        _signal(file_pid, signal.SIGTERM)
        return _wait_gone(home, file_pid, timeout_s, term_after_s=None)
    if file_pid is not None and remove_pid_file(home, file_pid):
        say(f"removed stale pid file {home / home_mod.DAEMON_PID_FILE}: pid {file_pid} {why}; "
            "it was not signalled")
    if unanswered is not None and lock_held(home):
        raise DaemonError(f"{unanswered}; the daemon lock is held, but no process is provably "
                          f"this data dir's daemon, so nothing was signalled")
    return False


def _wait_gone(home: Path, pid: int, timeout_s: float, term_after_s: float | None) -> bool:
    """Wait for `pid` to exit; SIGTERM it after `term_after_s` if it is still this home's
    daemon then (an exited daemon's pid may already belong to someone else)."""
    start = time.monotonic()
    while pid_alive(pid):
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise DaemonError(f"the profiling daemon (pid {pid}) did not stop within "
                              f"{timeout_s:g} s{_log_tail(home)}")
        if term_after_s is not None and waited >= term_after_s:
            term_after_s = None
            if daemon_process(pid, home)[0]:
                _signal(pid, signal.SIGTERM)
        time.sleep(0.02)
    _reap()
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def watch(home: Path | str | None, pid: int, run_id: str | None = None, *,
          simulate_gpu: bool = False) -> bool:
    """Ask the daemon to watch a runner's process tree; False when that did not happen.

    `simulate_gpu` says the run asked for simulated GPUs: a simulating daemon samples them
    only while such a run is watched, so a plain run never gets them.
    """
    try:
        reply = request(home, {"op": "watch", "pid": pid, "run_id": run_id,
                               "simulate_gpu": bool(simulate_gpu)})
    except (DaemonError, OSError):
        return False
    return bool(reply and reply.get("ok"))


def rewatch(home: Path | str | None, pid: int, run_id: str | None = None,
            simulate_gpu: bool = False) -> bool:
    """Make sure the daemon watches runner `pid` (of run `run_id`); False when it does not.

    For a watchdog after a daemon restart: watching a runner that is watched already changes
    nothing (its since_ns is kept), so calling this for every running run is safe. A daemon
    started after another one died also reads the watch set that one saved (watching.py);
    this covers a lost or unreadable watch file.
    """
    return watch(home, pid, run_id, simulate_gpu=simulate_gpu)


def unwatch(home: Path | str | None, pid: int) -> bool:
    """Ask the daemon to stop watching `pid`; False when that did not happen."""
    try:
        reply = request(home, {"op": "unwatch", "pid": pid})
    except (DaemonError, OSError):
        return False
    return bool(reply and reply.get("ok"))
