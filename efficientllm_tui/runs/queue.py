"""The run queue on disk: enqueue, claim, cancel and list, with nothing held in memory.

Why on disk: a batch must outlive every terminal (DESIGN.md section 3). A queued run is a
run dir like any other, with `spec.json` and a `queue.json` entry (when, which database,
which sweep); the per-host dispatcher starts it when its device is free. Whoever acts on a
queued run first (the dispatcher starting it, `stop` cancelling it) creates `claim.json`
with O_EXCL, so a run is started or cancelled, never both, even when the two race.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import fold, rundir
from runners.protocol import EVENTS_FILE, Event, ProtocolError, RunSpec

QUEUE_FILE = "queue.json"
CLAIM_FILE = "claim.json"
SWEEPS_DIR = "sweeps"


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """What `queue.json` says of a queued run."""

    queued_ns: int
    """When it was enqueued (wall clock): the order runs of one device start in."""
    db: str
    """The database file its results go to (`--db` at enqueue time)."""
    device_key: str
    """The device queue it waits in: `cpu`, `cuda:0`, ..."""
    sweep_id: str | None = None
    """The sweep (or study) it belongs to, if any."""

    def to_dict(self) -> dict[str, Any]:
        return {"queued_ns": self.queued_ns, "db": self.db, "device_key": self.device_key,
                "sweep_id": self.sweep_id}

    @classmethod
    def from_dict(cls, data: Any) -> QueueEntry:
        if not isinstance(data, dict):
            raise ValueError("queue entry is not a JSON object")
        queued, db, key = data.get("queued_ns"), data.get("db"), data.get("device_key")
        if not isinstance(queued, int) or not isinstance(db, str) or not isinstance(key, str):
            raise ValueError("queue entry lacks queued_ns, db or device_key")
        sweep = data.get("sweep_id")
        return cls(queued, db, key, sweep if isinstance(sweep, str) else None)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who took a queued run: the dispatcher (`start`) or a user (`cancel`)."""

    action: str
    """`start` or `cancel`."""
    t_ns: int
    pid: int


def has_cuda(env: dict[str, str] | None = None) -> bool:
    """Whether `auto` means a GPU here, without importing torch or NVML: an NVIDIA driver
    lists GPUs and CUDA_VISIBLE_DEVICES does not hide them all."""
    env = dict(os.environ) if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


def device_key(device: str, cuda: bool | None = None) -> str:
    """The queue a spec's device waits in: `auto` is `cuda:0` with a GPU, else `cpu`."""
    if device == "auto":
        return "cuda:0" if (has_cuda() if cuda is None else cuda) else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


def run_key(spec: RunSpec) -> str:
    """The queue key of a run: its device's, or for a run on several GPUs every device's,
    comma-joined (`cuda:0,cuda:1`): it waits until all of them are free."""
    from runners.distributed import run_devices

    key = device_key(spec.device)
    return ",".join(run_devices(key, spec.world_size))


def keys_of(key: str) -> set[str]:
    """The devices of a queue key (one, or a multi-device run's several)."""
    return set(key.split(","))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def enqueue(spec: RunSpec, home: Path, db: Path, *, sweep_id: str | None = None,
            now_ns: int | None = None) -> Path:
    """Write the run dir of `spec` with its queue entry; the dispatcher starts it.

    The run dir appears whole or not at all: a failure (full disk, no permission) removes
    what was written and raises BadInput with one line.
    """
    entry = QueueEntry(now_ns or time.time_ns(), str(Path(db).expanduser().absolute()),
                       run_key(spec), sweep_id)
    run_dir = rundir.prepare(spec, home)
    try:
        _write_json(run_dir / QUEUE_FILE, entry.to_dict())
    except OSError as e:
        rundir.remove(run_dir)
        raise BadInput(f"cannot queue run {spec.run_id} in {run_dir.parent}: "
                       f"{e.strerror or e}") from None
    return run_dir


def entry(run_dir: Path) -> QueueEntry | None:
    """The run's queue entry; None for a run started outside the queue.

    Raises:
        ValueError: The entry exists but cannot be read (a corrupt file).
    """
    try:
        text = (run_dir / QUEUE_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {run_dir / QUEUE_FILE}: {e}") from None
    try:
        return QueueEntry.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir / QUEUE_FILE} is not JSON: {e}") from None


def claim(run_dir: Path, action: str) -> bool:
    """Take the queued run for `action` (`start` or `cancel`); False when someone else did."""
    try:
        fd = os.open(run_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"action": action, "t_ns": time.time_ns(), "pid": os.getpid()})
                + "\n")
    return True


def claimed(run_dir: Path) -> Claim | None:
    """Who took the run, if anyone (an unreadable claim still counts as taken)."""
    try:
        data = json.loads((run_dir / CLAIM_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Claim("unknown", 0, 0)
    if not isinstance(data, dict):
        return Claim("unknown", 0, 0)
    return Claim(str(data.get("action")), int(data.get("t_ns") or 0), int(data.get("pid") or 0))


def is_waiting(run_dir: Path) -> bool:
    """Queued and not yet taken: no claim, no runner, no event."""
    return (run_dir / QUEUE_FILE).exists() and not (run_dir / CLAIM_FILE).exists() \
        and not (run_dir / EVENTS_FILE).exists()


def waiting(home: Path) -> Iterator[tuple[Path, QueueEntry]]:
    """Every waiting run with its entry, oldest first; corrupt entries are skipped here (the
    dispatcher reports them)."""
    found = []
    for run_dir in rundir.iter_dirs(home):
        if not is_waiting(run_dir):
            continue
        try:
            e = entry(run_dir)
        except ValueError:
            continue
        if e is not None:
            found.append((run_dir, e))
    yield from sorted(found, key=lambda p: (p[1].queued_ns, p[0].name))


# -- sweeps ------------------------------------------------------------------------------------

def sweeps_dir(home: Path) -> Path:
    return home / SWEEPS_DIR


def save_sweep(home: Path, sweep_id: str, source: str, specs: Iterable[RunSpec]) -> Path:
    """Record a sweep (its source and every spec) so `--resume` can re-enqueue what never
    ran and `--follow` can show the whole batch."""
    path = sweeps_dir(home) / f"{sweep_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"sweep_id": sweep_id, "source": source, "created_ns": time.time_ns(),
                       "specs": [s.to_dict() for s in specs]})
    return path


def sweep_ids(home: Path) -> set[str]:
    """The ids of the sweeps this home recorded."""
    folder = sweeps_dir(home)
    return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def sweep_specs(home: Path, sweep_id: str) -> list[RunSpec]:
    """The specs of a sweep this home recorded (none if it did not)."""
    if sweep_id not in sweep_ids(home):
        return []
    out = []
    for raw in load_sweep_record(home, sweep_id)["specs"]:
        try:
            out.append(RunSpec.from_dict(raw))
        except ProtocolError:
            continue
    return out


def load_sweep_record(home: Path, sweep_id: str) -> dict[str, Any]:
    """A saved sweep; a unique prefix of its id is enough."""
    folder = sweeps_dir(home)
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    match = [n for n in names if n == sweep_id] or [n for n in names if n.startswith(sweep_id)]
    if not match:
        raise BadInput(f"no sweep {sweep_id!r} in {folder}"
                       + (f" (known: {', '.join(names[-5:])})" if names else ""))
    if len(match) > 1:
        raise BadInput(f"sweep id {sweep_id!r} is ambiguous: {', '.join(match[:5])}")
    try:
        data = json.loads((folder / f"{match[0]}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read sweep {match[0]}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("specs"), list):
        raise BadInput(f"sweep {match[0]} is malformed (no specs)")
    return data


# -- what is queued and running, stopping ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QueueRow:
    """One run the queue knows of that has not ended: running, or waiting its turn."""

    run_id: str
    device_key: str
    state: str
    """`running` or `waiting`."""
    position: int
    """0 for running runs; 1, 2, ... in the order waiting runs of a device will start."""
    family: str
    model: str
    technique: str
    steps_done: int
    """Warm-up and measured steps so far, never past `total_steps`."""
    total_steps: int
    phase: str | None
    started_ns: int | None
    sweep_id: str | None


def snapshot(home: Path) -> list[QueueRow]:
    """Running and waiting runs per device, running first, then in start order."""
    rows: list[QueueRow] = []
    positions: dict[str, int] = {}
    for run_dir in rundir.iter_dirs(home):
        if rundir.ingested_final(run_dir):
            continue
        try:
            e = entry(run_dir)
            spec = RunSpec.from_json((run_dir / "spec.json").read_text(encoding="utf-8"))
        except (ValueError, OSError, UnicodeDecodeError):
            continue
        if is_waiting(run_dir):
            if e is None:
                continue
            rows.append(QueueRow(spec.run_id, e.device_key, "waiting", 0, spec.family,
                                 spec.model, spec.technique, 0, spec.warmup + spec.steps, None,
                                 None, e.sweep_id))
            continue
        c = claimed(run_dir)
        if c is not None and c.action == "cancel":
            continue
        events, _ = rundir.read_events(run_dir)
        if any(ev.kind == "result" for ev in events) or not rundir.runner_alive(run_dir):
            continue  # ended; the dispatcher stores it
        phase = next((ev.get("name") for ev in reversed(events) if ev.kind == "phase"), None)
        started = next((ev.t_ns for ev in events if ev.kind == "started"), None)
        rows.append(QueueRow(spec.run_id, e.device_key if e else device_key(spec.device),
                             "running", 0, spec.family, spec.model, spec.technique,
                             _steps_done(events, spec), spec.warmup + spec.steps,
                             str(phase) if phase else "starting",
                             started, e.sweep_id if e else None))
    waiting_rows = sorted((r for r in rows if r.state == "waiting"),
                          key=lambda r: (_queued_ns(home, r.run_id), r.run_id))
    out = [r for r in rows if r.state == "running"]
    for r in waiting_rows:
        positions[r.device_key] = positions.get(r.device_key, 0) + 1
        out.append(replace(r, position=positions[r.device_key]))
    return sorted(out, key=lambda r: (r.device_key, r.position))


def _steps_done(events: Iterable[Event], spec: RunSpec) -> int:
    """Warm-up and measured steps so far, never past their total (runs.fold.steps_done)."""
    done = 0
    for ev in events:
        done = fold.steps_done(done, ev, warmup=spec.warmup, total=spec.warmup + spec.steps)
    return done


def _queued_ns(home: Path, run_id: str) -> int:
    from profiling import home as homes

    try:
        e = entry(homes.runs_dir(home) / run_id)
    except ValueError:
        return 0
    return e.queued_ns if e else 0


def stop(home: Path, run_ids: Iterable[str]) -> list[tuple[str, str]]:
    """Stop runs: a waiting one leaves the queue (stored `cancelled`), a running one gets
    SIGTERM (its runner records `cancelled`). Returns (run_id, what happened) each; never
    signals a process that is not the run's runner (pid reuse is checked)."""
    import signal

    from profiling import home as homes

    out: list[tuple[str, str]] = []
    for run_id in run_ids:
        run_dir = homes.runs_dir(home) / run_id
        if not (run_dir / "spec.json").is_file():
            out.append((run_id, "unknown run"))
            continue
        if is_waiting(run_dir) and claim(run_dir, "cancel"):
            rundir.append_event(run_dir, Event.error("crash", "cancelled",
                                                     before_start=True))
            out.append((run_id, "removed from the queue"))
            continue
        pid, created = rundir.runner_process(run_dir)
        if pid is None or not rundir.pid_alive(pid, created):
            out.append((run_id, "not running"))
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            out.append((run_id, f"could not signal pid {pid}: {e.strerror or e}"))
            continue
        out.append((run_id, f"stopping (SIGTERM to pid {pid})"))
    return out


def resolve_id(token: str, known: dict[str, int]) -> str:
    """A run id from what a user typed: the id, a unique prefix of it, or `last` (the newest
    of `known`, a map of run id to creation time in ns)."""
    if token == "last":
        if not known:
            raise BadInput("no runs yet, so `last` names none")
        return max(known, key=lambda r: (known[r], r))
    if token in known:
        return token
    matches = sorted(r for r in known if r.startswith(token))
    if len(matches) == 1:
        return matches[0]
    shown = "".join(ch if ch.isprintable() else "?" for ch in token)[:80]
    if not matches:
        raise BadInput(f"no run {shown!r}")
    raise BadInput(f"run id prefix {shown!r} is ambiguous: {', '.join(matches[:4])}"
                   + (f" and {len(matches) - 4} more" if len(matches) > 4 else ""))


def known_runs(home: Path) -> dict[str, int]:
    """Run id -> creation time (ns) of every run dir of this data dir."""
    out: dict[str, int] = {}
    for run_dir in rundir.iter_dirs(home):
        try:
            out[run_dir.name] = (run_dir / "spec.json").stat().st_mtime_ns
        except OSError:
            continue
    return out
