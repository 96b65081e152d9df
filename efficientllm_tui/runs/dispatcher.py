"""The per-host dispatcher: starts queued runs as their devices free, stores each finished
run exactly once, and marks dead runners orphaned. `python -m efficientllm_tui.runs.dispatcher`.

Why a process of its own: the queue must outlive every terminal (DESIGN.md section 3). The
TUI and the CLI only enqueue, watch and cancel; this process, detached like the profiling
daemon (own session, no parent pipes), does the rest and exits once the queue is empty and
no run it knows of is going. It holds no state that is not on disk: kill it at any moment
and the next one (started by whoever enqueues next, or by `recover`) picks up where it
stopped, because a run dir says whether it is waiting, running, finished or stored.

One per host: the dispatcher holds an exclusive `flock` on `dispatcher.lock` for its whole
life. Racing starters both spawn one; the loser finds the lock taken and exits at once. On
its way out a dispatcher releases the lock *before* its last look at the queue, and an
enqueuer writes its run dir *before* it checks the lock, so a run enqueued during the exit
is seen by one of the two.

One run per device: a queued run starts only while no run this host knows of is going on
its device (`device_key`), so a second run never does its heavy start-up beside a measured
one. The runner still takes the device lock itself (runs started outside the queue).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from efficientllm_tui.errors import BadInput, DatabaseLocked, EfficientLLMError
from efficientllm_tui.runs import queue, rundir
from profiling import home as homes
from runners.protocol import Event, ProtocolError, RunSpec

LOCK_FILE = "dispatcher.lock"
PID_FILE = "dispatcher.pid"
LOG_FILE = "dispatcher.log"
DEFAULT_IDLE_S = 5.0
POLL_S = 0.25
WATCHDOG_S = 3.0
"""How often, while runs go, the dispatcher checks that a profiling daemon watches them."""
INGEST_LOCK_TIMEOUT_S = 1.0
"""How long one ingest waits for a locked database before the loop moves on (retried)."""

log = logging.getLogger("efficientllm.dispatcher")


def idle_exit_s() -> float:
    """How long a dispatcher with nothing queued or running waits before it exits."""
    raw = os.environ.get("EFFICIENTLLM_DISPATCHER_IDLE_S", str(DEFAULT_IDLE_S))
    try:
        return max(0.2, float(raw))
    except ValueError:
        raise BadInput(f"EFFICIENTLLM_DISPATCHER_IDLE_S must be seconds, got {raw!r}") from None


def daemon_idle_s() -> float:
    """How long an auto-started profiling daemon waits with nothing to watch."""
    raw = os.environ.get("EFFICIENTLLM_DAEMON_IDLE_S", "300")
    try:
        return max(1.0, float(raw))
    except ValueError:
        raise BadInput(f"EFFICIENTLLM_DAEMON_IDLE_S must be a number of seconds, got {raw!r}"
                       ) from None


# -- one per host --------------------------------------------------------------------------------

def _lock_path(home: Path) -> Path:
    return home / LOCK_FILE


def _try_lock(home: Path) -> int | None:
    """The lock's fd when this process got it; None when another process holds it."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(home), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def running_pid(home: Path) -> int | None:
    """The pid of this host's dispatcher, or None when none holds the lock."""
    fd = _try_lock(home)
    if fd is not None:
        os.close(fd)  # nobody held it
        return None
    try:
        return int((home / PID_FILE).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return -1  # held, pid not written yet


def ensure(home: Path) -> bool:
    """Make sure a dispatcher runs for `home`; True when this call started one."""
    if running_pid(home) is not None:
        return False
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # importable from a source tree too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(home / LOG_FILE, "ab") as out:
        subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "efficientllm_tui.runs.dispatcher", "--home", str(home)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=True,
            start_new_session=True, cwd=str(home), env=env)
    return True


# -- the loop ------------------------------------------------------------------------------------

@dataclass
class Dispatcher:
    """The dispatch loop over one data dir (one instance a process)."""

    home: Path
    idle_s: float = DEFAULT_IDLE_S
    poll_s: float = POLL_S
    done: set[str] = field(default_factory=set)
    """Run dirs known to be stored in a final state: never looked at again."""
    reported: set[str] = field(default_factory=set)
    """Broken run dirs already logged (logged once, retried every loop)."""
    retry_at: dict[str, float] = field(default_factory=dict)
    """Runs whose store failed (a corrupt or unwritable database): when to try again."""
    retry_s: float = 10.0
    watchdog_at: float = 0.0
    """When the profiling daemon was last checked for the running runs."""

    def step(self) -> tuple[int, int]:
        """One pass: store what ended, start what can start. Returns (waiting, running)."""
        busy: set[str] = set()
        waiting: list[tuple[Path, queue.QueueEntry]] = []
        running_dirs: list[Path] = []
        now = time.monotonic()
        for run_dir in rundir.iter_dirs(self.home):
            if run_dir.name in self.done or self.retry_at.get(run_dir.name, 0.0) > now:
                continue
            if (run_dir / rundir.REMOTE_FILE).exists():
                continue  # a Ray job's run: its submitter follows and stores it
            try:
                state = self._look(run_dir)
            except Exception as e:  # noqa: BLE001 - one broken run dir never stops the queue
                self._report(run_dir, f"{type(e).__name__}: {e}")
                continue
            if state == "running":
                entry = _entry_or_none(run_dir)
                busy |= queue.keys_of(entry.device_key if entry else _spec_key(run_dir))
                running_dirs.append(run_dir)
            elif state == "waiting":
                entry = _entry_or_none(run_dir)
                if entry is not None:
                    waiting.append((run_dir, entry))
        if running_dirs and time.monotonic() - self.watchdog_at >= WATCHDOG_S:
            self.watchdog_at = time.monotonic()
            self._watchdog(running_dirs)
        started = 0
        for run_dir, entry in sorted(waiting, key=lambda p: (p[1].queued_ns, p[0].name)):
            if queue.keys_of(entry.device_key) & busy:
                continue
            if self._start(run_dir, entry):
                busy |= queue.keys_of(entry.device_key)
                started += 1
        return len(waiting) - started, len(busy)

    def _look(self, run_dir: Path) -> str:
        """What a run dir needs: `waiting`, `running`, or `done` (stored now if it ended)."""
        try:
            entry = queue.entry(run_dir)
        except ValueError as e:
            self._fail(run_dir, f"corrupt queue entry: {e}")
            return "done"
        claim = queue.claimed(run_dir)
        if entry is not None and claim is None and not (run_dir / "events.jsonl").exists():
            return "waiting"
        if rundir.ingested_final(run_dir):
            self.done.add(run_dir.name)
            return "done"
        if _ended(run_dir) or (claim is not None and claim.action == "cancel"):
            self._ingest(run_dir, entry)
            return "done"
        if claim is not None and claim.action == "start" and \
                rundir.runner_process(run_dir)[0] is None:
            # Claimed but no runner recorded: the dispatcher died between claim and spawn.
            if time.time_ns() - claim.t_ns > 30 * 10**9:
                self._ingest(run_dir, entry)
                return "done"
        return "running"

    def _start(self, run_dir: Path, entry: queue.QueueEntry) -> bool:
        if not queue.claim(run_dir, "start"):
            return False  # cancelled (or taken) meanwhile
        try:
            spec = _spec(run_dir)
            _validate(spec)
        except (BadInput, ProtocolError) as e:
            rundir.append_event(run_dir, Event.error("bad_input", f"not started: {e}"))
            self._ingest(run_dir, entry)
            return False
        try:
            self._ensure_daemon(spec)
        except BadInput as e:
            rundir.append_event(run_dir, Event.error("bad_input", str(e)))
            self._ingest(run_dir, entry)
            return False
        try:
            proc = rundir.spawn(run_dir)
        except OSError as e:
            rundir.append_event(run_dir, Event.error("crash", f"could not start the runner: {e}"))
            self._ingest(run_dir, entry)
            return False
        log.info("started %s on %s (pid %d)", run_dir.name, entry.device_key, proc.pid)
        return True

    def _watchdog(self, running: list[Path]) -> None:
        """While runs go, keep a profiling daemon alive and watching their runners: one
        killed or stopped mid-run is replaced within WATCHDOG_S, and the hole it left is
        reported at ingest (sample coverage), never bridged."""
        from profiling.daemon import client

        watches = []
        for run_dir in running:
            pid, _ = rundir.runner_process(run_dir)
            try:
                simulated = bool(_spec(run_dir).simulate_gpu)
            except (BadInput, ProtocolError):
                continue
            if pid is not None:
                watches.append(client.RunnerWatch(pid, run_dir.name, simulated))
        try:
            client.ensure_daemon(self.home, idle_exit_s=daemon_idle_s(),
                                 simulate_gpu=True if any(w.simulate_gpu for w in watches)
                                 else None, watches=watches)
        except client.DaemonError as e:
            log.warning("profiling daemon watchdog: %s", e)

    def _ensure_daemon(self, spec: RunSpec) -> None:
        from profiling.daemon import client

        try:
            client.ensure_daemon(self.home, idle_exit_s=daemon_idle_s(),
                                 simulate_gpu=True if spec.simulate_gpu else None)
        except client.DaemonError as e:
            if spec.simulate_gpu:
                raise BadInput(f"cannot simulate a GPU: {e}") from None
            log.warning("no profiling daemon (%s); %s will have no samples", e, spec.run_id)

    def _ingest(self, run_dir: Path, entry: queue.QueueEntry | None) -> None:
        """Store the run (idempotent); a locked database is retried on the next pass."""
        from efficientllm_tui.runs.ingest import ingest_run
        from efficientllm_tui.store.db import Store

        db = Path(entry.db) if entry is not None else homes.default_db_path(self.home)
        try:
            state = ingest_run(Store(db, lock_timeout_s=INGEST_LOCK_TIMEOUT_S), run_dir,
                               self.home)
        except DatabaseLocked:
            return  # safe in its run dir; next pass
        except EfficientLLMError as e:
            # The run is safe in its dir; a database that cannot take it now (corrupt,
            # unwritable, a full disk) is tried again later, never given up on.
            self._report(run_dir, str(e))
            self.retry_at[run_dir.name] = time.monotonic() + self.retry_s
            return
        self.retry_at.pop(run_dir.name, None)
        if state.status not in ("running", "queued"):
            self.done.add(run_dir.name)
            log.info("stored %s: %s", run_dir.name, state.status)

    def _fail(self, run_dir: Path, why: str) -> None:
        if not (run_dir / "events.jsonl").exists() and queue.claim(run_dir, "cancel"):
            rundir.append_event(run_dir, Event.error("bad_input", f"not started: {why}"))
        self._ingest(run_dir, None)

    def _report(self, run_dir: Path, why: str) -> None:
        if run_dir.name not in self.reported:
            self.reported.add(run_dir.name)
            log.error("run dir %s: %s", run_dir, why)

    def run(self, lock_fd: int) -> int:
        """Loop until idle for `idle_s`; returns the exit code."""
        idle_since: float | None = None
        while True:
            waiting, running = self.step()
            if waiting or running:
                idle_since = None
            else:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= self.idle_s:
                    # Release first, then look once more (see the module docstring).
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
                    os.close(lock_fd)
                    if not any(True for _ in queue.waiting(self.home)):
                        return 0
                    new_fd = _try_lock(self.home)
                    if new_fd is None:
                        return 0  # a new dispatcher took over
                    lock_fd = new_fd
                    _write_pid(self.home)
                    idle_since = None
            time.sleep(self.poll_s)


def _entry_or_none(run_dir: Path) -> queue.QueueEntry | None:
    with contextlib.suppress(ValueError):
        return queue.entry(run_dir)
    return None


def _spec(run_dir: Path) -> RunSpec:
    try:
        return RunSpec.from_json((run_dir / "spec.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read its spec.json: {e}") from None


def _spec_key(run_dir: Path) -> str:
    try:
        return queue.run_key(_spec(run_dir))
    except (BadInput, ProtocolError):
        return "?"


def _validate(spec: RunSpec) -> None:
    """The launcher's checks again: a spec queued by an older version may no longer hold."""
    from efficientllm_tui.runs import specs
    from runners import errors as runner_errors
    from runners import preflight

    try:
        preflight.validate_spec(spec, specs.resolve_model(spec.model))
    except (ProtocolError, runner_errors.BadInput) as e:
        raise BadInput(str(e)) from None


def _ended(run_dir: Path) -> bool:
    """The runner reported its end, or is gone."""
    events, _ = rundir.read_events(run_dir)
    if any(e.kind == "result" for e in events):
        return True  # the result is the runner's last word; it may still be exiting
    if any(e.kind == "error" for e in events) and not rundir.runner_alive(run_dir):
        return True  # an error with no result after it: died (or never started)
    pid, _ = rundir.runner_process(run_dir)
    return pid is not None and not rundir.runner_alive(run_dir)


def _write_pid(home: Path) -> None:
    tmp = home / (PID_FILE + ".tmp")
    tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
    os.replace(tmp, home / PID_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efficientllm_tui.runs.dispatcher")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--idle-exit-s", type=float, default=None)
    args = parser.parse_args(argv)
    os.umask(0o077)  # run dirs, the log and the database are this user's only
    home = (args.home or homes.data_dir()).expanduser()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s dispatcher[%(process)d] %(levelname)s %(message)s")
    fd = _try_lock(home)
    if fd is None:
        return 0  # one per host: another dispatcher runs
    _write_pid(home)
    try:
        idle = args.idle_exit_s if args.idle_exit_s is not None else idle_exit_s()
    except BadInput as e:
        log.error("%s", e)
        idle = DEFAULT_IDLE_S
    log.info("dispatching for %s (idle exit %.1f s)", home, idle)
    return Dispatcher(home, idle_s=idle).run(fd)


if __name__ == "__main__":
    sys.exit(main())

