"""One run dir on disk: its files, its runner process, its events. The only place that knows
the layout of `runs/<run_id>/` on the app side.

Why files: runs must outlive their launcher (DESIGN.md section 3). A runner starts in its own
session with stdin from /dev/null and stdout/stderr to files in its run dir, so closing the
terminal or losing SSH never reaches it; everyone else only reads the run dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from efficientllm_tui.errors import BadInput
from profiling import home as homes
from runners.distributed import launch_argv
from runners.protocol import (
    EVENTS_FILE,
    PID_FILE,
    SPEC_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    Event,
    ProtocolError,
    RunSpec,
)

LAUNCHER_FILE = "launcher.json"
"""The spawner's record of the runner's pid, before the runner writes runner.pid itself."""
EXIT_FILE = "exit.json"
"""How the runner process ended, written by the process that started (and reaped) it."""
REMOTE_FILE = "remote.json"
"""A run that runs as a Ray job on another node: where (address, job id, host); its
submitter, not this host's dispatcher, follows and stores it (efficientllm_tui.runs.ray_jobs)."""
INGESTED_FILE = "ingested.json"
"""Written when a run is stored: its status and the events' size then."""
PRIVATE_DIR_MODE = 0o700


def prepare(spec: RunSpec, home: Path) -> Path:
    """Create runs/<run_id>/ (this user only) and write spec.json atomically, never over an
    existing run. A failure (full disk) leaves no half-made dir and raises BadInput."""
    run_dir = homes.runs_dir(home) / spec.run_id
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        run_dir.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        raise BadInput(f"run {spec.run_id!r} already exists in {run_dir.parent}") from None
    except OSError as e:
        raise BadInput(f"cannot create run dir {run_dir}: {e.strerror or e}") from None
    try:
        tmp = run_dir / (SPEC_FILE + ".tmp")
        tmp.write_text(spec.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / SPEC_FILE)
    except OSError as e:
        remove(run_dir)
        raise BadInput(f"cannot write {run_dir / SPEC_FILE}: {e.strerror or e}") from None
    return run_dir


def remove(run_dir: Path) -> None:
    """Delete a run dir this process just made (best effort)."""
    shutil.rmtree(run_dir, ignore_errors=True)


def spawn(run_dir: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m runners RUN_DIR` detached (own session, stdio to files); a spec of
    world_size N starts it under torchrun with N processes (runners.distributed)."""
    child_env = dict(os.environ if env is None else env)
    try:
        world_size = RunSpec.from_json((run_dir / SPEC_FILE).read_text("utf-8")).world_size
    except (OSError, ValueError):
        world_size = 1  # the runner itself reports what is wrong with its spec
    child_env["EFFICIENTLLM_HOME"] = str(run_dir.parent.parent)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(run_dir / STDOUT_FILE, "ab") as out, open(run_dir / STDERR_FILE, "ab") as err:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            launch_argv(sys.executable, str(run_dir), world_size),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
            start_new_session=True, cwd=str(run_dir), env=child_env,
        )
    # The spawner's view too: a runner that dies during import must still read as dead.
    (run_dir / LAUNCHER_FILE).write_text(
        json.dumps({"pid": proc.pid, "spawned_ns": time.time_ns(),
                    "create_time": _create_time(proc.pid)}) + "\n", encoding="utf-8")
    _CHILDREN[proc.pid] = (proc, run_dir)
    return proc


# Runners this process started, so their exit is reaped (no zombies) and recorded.
_CHILDREN: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}


def _record_exit(run_dir: Path, returncode: int) -> None:
    """exit.json: the runner's exit code, or the signal that killed it (best effort)."""
    import signal

    data: dict[str, object] = {"returncode": returncode, "t_ns": time.time_ns()}
    if returncode < 0:
        try:
            data["signal"] = signal.Signals(-returncode).name
        except ValueError:
            data["signal"] = f"signal {-returncode}"
    try:
        tmp = run_dir / (EXIT_FILE + ".tmp")
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / EXIT_FILE)
    except OSError:
        pass


def exit_status(run_dir: Path) -> str | None:
    """How the runner ended, in words (`killed by SIGKILL`, `exited with code 1`), when the
    process that started it saw it end; else None."""
    try:
        data = json.loads((run_dir / EXIT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("signal"):
        return f"killed by {data['signal']}"
    return f"exited with code {data.get('returncode')}"


def _create_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - gone already, or psutil cannot see it
        return None


def runner_process(run_dir: Path) -> tuple[int | None, float | None]:
    """(pid, psutil create_time) of the run's runner from runner.pid, else launcher.json."""
    for name in (PID_FILE, LAUNCHER_FILE):
        try:
            text = (run_dir / name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = text.split()[0] if text else None
        pid = data.get("pid") if isinstance(data, dict) else data
        created = data.get("create_time") if isinstance(data, dict) else None
        try:
            return (int(pid) if pid is not None else None,
                    float(created) if isinstance(created, (int, float)) else None)
        except (TypeError, ValueError):
            continue
    return None, None


def runner_pid(run_dir: Path) -> int | None:
    """The runner's pid (runner.pid, or launcher.json before the runner wrote it)."""
    return runner_process(run_dir)[0]


def pid_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True when the process exists, is not a zombie, and (when `create_time` is given) is
    the same process: a pid reused by another process reads as dead."""
    if pid is None or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        proc, run_dir = child
        if proc.poll() is None:
            return True
        del _CHILDREN[pid]
        _record_exit(run_dir, proc.returncode)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    if create_time is not None:
        now = _create_time(pid)
        if now is not None and abs(now - create_time) > 1.0:
            return False
    return True


def runner_alive(run_dir: Path) -> bool:
    """Whether the run's runner process still runs (pid reuse detected)."""
    pid, created = runner_process(run_dir)
    return pid_alive(pid, created)


def read_events(run_dir: Path, name: str = EVENTS_FILE) -> tuple[list[Event], int]:
    """Every complete event line of a run (or of its file `name`, e.g. a rank's), and how
    many lines were unreadable (bad JSON, bad UTF-8, bad fields): one bad line never hides
    the others."""
    events: list[Event] = []
    bad = 0
    try:
        with open(run_dir / name, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written; the next read gets it whole
                if not raw.strip():
                    continue
                try:
                    events.append(Event.from_json(raw.decode("utf-8")))
                except (ProtocolError, UnicodeDecodeError, ValueError, TypeError):
                    bad += 1
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    return events, bad


class EventTail:
    """Incremental reader of events.jsonl: returns only whole new lines on each poll."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EVENTS_FILE
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except (FileNotFoundError, IsADirectoryError):
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[Event] = []
        for raw in lines:
            if raw.strip():
                try:
                    out.append(Event.from_json(raw.decode("utf-8")))
                except (ProtocolError, UnicodeDecodeError, ValueError, TypeError):
                    continue
        return out


def append_event(run_dir: Path, event: Event) -> None:
    """Append one event for a runner that never started (a spec that no longer validates,
    a cancelled queued run), so the run dir tells its own ending like any other."""
    with open(run_dir / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(event.to_json() + "\n")


def iter_dirs(home: Path) -> Iterator[Path]:
    """Every run dir (a directory with spec.json) under the data dir, in name order."""
    root = homes.runs_dir(home)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.is_dir() and (path / SPEC_FILE).is_file():
            yield path


def ingested_final(run_dir: Path) -> bool:
    """True when the run was stored in a final state and its events have not grown since."""
    try:
        mark = json.loads((run_dir / INGESTED_FILE).read_text(encoding="utf-8"))
        size = (run_dir / EVENTS_FILE).stat().st_size if (run_dir / EVENTS_FILE).exists() \
            else 0
    except (OSError, ValueError):
        return False
    return isinstance(mark, dict) and mark.get("status") not in (None, "running", "queued") \
        and mark.get("events_bytes") == size


def mark_ingested(run_dir: Path, status: str) -> None:
    events = run_dir / EVENTS_FILE
    size = events.stat().st_size if events.exists() else 0
    tmp = run_dir / (INGESTED_FILE + ".tmp")
    tmp.write_text(json.dumps({"status": status, "events_bytes": size,
                               "t_ns": time.time_ns()}) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / INGESTED_FILE)
