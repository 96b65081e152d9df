"""Run launching: validate a spec, lay out its run dir, start the runner detached, follow it.

Why detached: runs must outlive their launcher. A runner starts in its own session with
stdin from /dev/null and stdout/stderr to files in its run dir, so closing the terminal or
losing SSH (SIGHUP to the TUI) never reaches it, and no test or CI waits on its pipes. The
launcher only tails `events.jsonl`; the runner takes its own per-device lock.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import efficientllm_data

from efficientllm_tui.errors import BadInput
from profiling import home as homes
from runners import errors as runner_errors
from runners import preflight
from runners.protocol import (
    EVENTS_FILE,
    FAMILIES,
    PID_FILE,
    SPEC_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    Event,
    ProtocolError,
    RunSpec,
    new_run_id,
)

TERMINAL_KINDS = ("result", "error")


def resolve_technique(technique: str, family: str | None) -> tuple[str, dict[str, Any]]:
    """The family of a technique id (ids are unique across families), checked against `family`."""
    entry = efficientllm_data.find_technique(technique)
    if entry is None:
        ids = sorted(t["id"] for t in efficientllm_data.catalog()["techniques"]
                     if family is None or t["family"] == family)
        raise BadInput(f"unknown technique {technique!r}; known: {', '.join(ids)}")
    if family is not None and family not in FAMILIES:
        raise BadInput(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if family is not None and entry["family"] != family:
        raise BadInput(f"technique {technique!r} belongs to family {entry['family']!r}, "
                       f"not {family!r}")
    return entry["family"], entry


def resolve_model(model: str) -> dict[str, Any] | None:
    """The catalog card of a model id; None for an existing local weights dir."""
    card = efficientllm_data.find_model(model)
    if card is not None:
        return card
    if os.path.isdir(os.path.expanduser(model)):
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return None  # an offline Hugging Face cache id (org/name): the runner resolves it
    ids = sorted(m["id"] for m in efficientllm_data.catalog()["models"])
    raise BadInput(f"unknown model {model!r}; known: {', '.join(ids)} (or a local weights dir, "
                   "or an org/name entry of the offline Hugging Face cache)")


def build_spec(*, model: str, technique: str, family: str | None = None, device: str = "auto",
               params: dict[str, Any] | None = None, run_id: str | None = None,
               **fields: Any) -> RunSpec:
    """A validated RunSpec from user input; every problem is a BadInput with one line.

    Checks what the runner would refuse, before any runner starts: the `--set` parameters
    against the runners' schema, the pair against the model card and the head of the
    dataset (runners.preflight), so bad input leaves no run dir and no stored run.
    """
    family, _ = resolve_technique(technique, family)
    card = resolve_model(model)
    if fields.get("dataset"):
        path = Path(str(fields["dataset"])).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise BadInput(f"dataset {str(fields['dataset'])!r} is not a readable file")
        fields["dataset"] = str(path.resolve())
    now = time.time_ns()
    try:
        spec = RunSpec(run_id=run_id or new_run_id(model, technique, now), family=family,
                       technique=technique, model=model, device=device,
                       params=dict(params or {}), created_ns=now,
                       **{k: v for k, v in fields.items() if v is not None})
        preflight.validate_spec(spec, card)
    except (ProtocolError, runner_errors.BadInput) as e:
        raise BadInput(str(e)) from None
    return spec


def technique_available(technique: str) -> bool:
    entry = efficientllm_data.find_technique(technique)
    return bool(entry and entry.get("available"))


def prepare_run_dir(spec: RunSpec, home: Path) -> Path:
    """Create runs/<run_id>/ and write spec.json atomically (never over an existing run)."""
    run_dir = homes.runs_dir(home) / spec.run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise BadInput(f"run {spec.run_id!r} already exists in {run_dir.parent}") from None
    except OSError as e:
        raise BadInput(f"cannot create run dir {run_dir}: {e.strerror or e}") from None
    tmp = run_dir / (SPEC_FILE + ".tmp")
    tmp.write_text(spec.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / SPEC_FILE)
    return run_dir


def spawn_runner(run_dir: Path, *, env: dict[str, str] | None = None) -> int:
    """Start `python -m runners RUN_DIR` detached; returns its pid (the runner's own)."""
    child_env = dict(os.environ if env is None else env)
    child_env["EFFICIENTLLM_HOME"] = str(run_dir.parent.parent)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(run_dir / STDOUT_FILE, "ab") as out, open(run_dir / STDERR_FILE, "ab") as err:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "runners", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
            start_new_session=True, cwd=str(run_dir), env=child_env,
        )
    # Record the launcher's view too: the runner writes runner.pid itself once it starts,
    # but a runner that dies during import must still be recognisable as dead.
    (run_dir / "launcher.json").write_text(
        json.dumps({"pid": proc.pid, "spawned_ns": time.time_ns()}) + "\n", encoding="utf-8")
    _REAPERS[proc.pid] = proc
    return proc.pid


# Popen objects of runners we started, so their exit can be reaped (no zombies while we follow).
_REAPERS: dict[int, subprocess.Popen[bytes]] = {}


def runner_pid(run_dir: Path) -> int | None:
    """The runner's pid from runner.pid (or launcher.json before the runner wrote it)."""
    for name in (PID_FILE, "launcher.json"):
        path = run_dir / name
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        try:
            data = json.loads(text)
            pid = data.get("pid") if isinstance(data, dict) else data
        except json.JSONDecodeError:
            pid = text.split()[0] if text else None
        try:
            return int(pid) if pid is not None else None
        except (TypeError, ValueError):
            continue
    return None


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie (reaping our own children)."""
    if pid is None or pid <= 0:
        return False
    proc = _REAPERS.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _REAPERS[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_events(run_dir: Path) -> tuple[list[Event], int]:
    """Every complete event line of a run, and how many lines were unreadable."""
    events: list[Event] = []
    bad = 0
    try:
        with open(run_dir / EVENTS_FILE, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a line still being written; the next read gets it whole
                if not line.strip():
                    continue
                try:
                    events.append(Event.from_json(line))
                except ProtocolError:
                    bad += 1
    except FileNotFoundError:
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
        except FileNotFoundError:
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
                except (ProtocolError, UnicodeDecodeError):
                    continue
        return out


@dataclass(frozen=True, slots=True)
class FollowOutcome:
    """How following a run ended."""

    terminal: Event | None
    """The result or error event; None when the runner died without one (orphaned)."""
    events: int
    """Events seen while following."""


def follow(run_dir: Path, on_event: Callable[[Event], None] | None = None, *,
           poll_s: float = 0.1, pid: int | None = None) -> FollowOutcome:
    """Tail a run until its result/error event or until its runner is gone."""
    tail = EventTail(run_dir)
    seen = 0
    terminal: Event | None = None
    dead_polls = 0
    while True:
        for ev in tail.poll():
            seen += 1
            if on_event is not None:
                on_event(ev)
            if ev.kind == "result" or (ev.kind == "error" and terminal is None):
                terminal = ev
        if terminal is not None:
            # The runner may still flush a result after an error (oom): give it a moment.
            if not pid_alive(pid or runner_pid(run_dir)):
                for ev in tail.poll():
                    seen += 1
                    if on_event is not None:
                        on_event(ev)
                    if ev.kind == "result":
                        terminal = ev
                return FollowOutcome(terminal, seen)
        elif not pid_alive(pid or runner_pid(run_dir)):
            dead_polls += 1
            if dead_polls >= 2:  # one more read after death catches the last lines
                return FollowOutcome(None, seen)
        time.sleep(poll_s)


def iter_run_dirs(home: Path) -> Iterator[Path]:
    root = homes.runs_dir(home)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if (child / SPEC_FILE).is_file():
            yield child
