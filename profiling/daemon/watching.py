"""The daemon's watched runners: the watch/unwatch ops, and the watch set on disk, so a
daemon that replaces a killed or stopped one keeps watching.

A runner registers with the daemon once (`watch`). When that daemon dies mid-run (killed,
stopped, crashed) and a watchdog starts a new one (`client.ensure_daemon`), the new daemon
reads `<home>/daemon.watch.json`, written by its predecessor on every change, and watches
again each runner that still runs: same pid *and* same process create time, so a reused
pid is never taken for the runner. Without it the new daemon would sample no process tree
for the run, show it no simulated GPU, and could idle-exit while the run goes on.

Format: `{"version": 1, "watched": [{"pid": N, "run_id": S|null, "since_ns": T,
"create_time": F, "simulate_gpu": B}, ...]}`, replaced atomically (mode 0600).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiling.backends.base import Backend, Watched, WatchSet
from profiling.backends.host import process_create_time, watched_alive

log = logging.getLogger("profiling.daemon.watchfile")

WATCH_FILE = "daemon.watch.json"
_VERSION = 1
PID_MAX = 2**22
"""Linux's largest pid_max; a larger "pid" in a request is refused before any lookup."""


@dataclass(frozen=True, slots=True)
class SavedWatch:
    """One watched runner as the previous daemon saved it."""

    watched: Watched
    """pid, run_id, since_ns and create time."""
    simulate_gpu: bool
    """The run asked for simulated GPUs."""


def save(home: Path, entries: list[Watched], simulated_pids: set[int]) -> bool:
    """Replace the watch file with `entries`; False (logged) when it cannot be written."""
    path = home / WATCH_FILE
    doc = {"version": _VERSION, "watched": [
        {"pid": w.pid, "run_id": w.run_id, "since_ns": w.since_ns,
         "create_time": w.create_time, "simulate_gpu": w.pid in simulated_pids}
        for w in entries]}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save the watch set to %s: %s (a daemon started after this one "
                    "would not know the watched runs)", path, e)
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
    return True


def load(home: Path) -> list[SavedWatch]:
    """The saved watch set; [] when there is none or it is unreadable (logged)."""
    path = home / WATCH_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable watch file %s: %s", path, e)
        return []
    items = doc.get("watched") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        log.warning("ignoring watch file %s: no 'watched' list", path)
        return []
    out = []
    for d in items:
        entry = _entry(d)
        if entry is None:
            log.warning("ignoring a malformed entry of %s: %r", path, d)
            continue
        out.append(entry)
    return out


def _entry(d: Any) -> SavedWatch | None:
    if not isinstance(d, dict):
        return None
    pid, run_id, since, ctime = d.get("pid"), d.get("run_id"), d.get("since_ns"), \
        d.get("create_time")
    if type(pid) is not int or pid <= 0 or type(since) is not int:
        return None
    if run_id is not None and not isinstance(run_id, str):
        return None
    if not isinstance(ctime, (int, float)) or isinstance(ctime, bool):
        return None  # without a create time a reused pid could not be told apart
    return SavedWatch(Watched(pid=pid, run_id=run_id, since_ns=since, create_time=float(ctime)),
                      simulate_gpu=d.get("simulate_gpu") is True)


class Watches:
    """The watch sets of one daemon and the file that outlives it.

    Called from the socket thread only (requests and housekeeping); the sets themselves are
    thread-safe for the sampler and the backends.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.watch_set = WatchSet()
        self.sim_watch_set = WatchSet()
        """The watched runs that asked for simulated GPUs."""
        self.backends: list[Backend] = []
        self.simulated = False
        """The daemon runs simulated GPUs (set once its backends are up)."""

    def watch(self, pid: Any, run_id: Any, simulate_gpu: Any) -> dict[str, Any]:
        """The `watch` op: its reply."""
        if type(pid) is not int or not 0 < pid <= PID_MAX:
            return {"ok": False, "error": f"pid must be a positive integer <= {PID_MAX}"}
        if run_id is not None and not isinstance(run_id, str):
            return {"ok": False, "error": "run_id must be a string"}
        if not isinstance(simulate_gpu, bool):
            return {"ok": False, "error": "simulate_gpu must be true or false"}
        ctime = process_create_time(pid)
        if ctime is None:
            return {"ok": False, "error": f"no such process {pid}"}
        simulating = self._add(pid, run_id, ctime, None, simulate_gpu)
        self.save()
        return {"ok": True, "watched": [w.to_dict() for w in self.watch_set.entries()],
                "simulating": simulating}

    def unwatch(self, pid: Any) -> dict[str, Any]:
        """The `unwatch` op: its reply."""
        if type(pid) is not int or not 0 < pid <= PID_MAX:
            return {"ok": False, "error": f"pid must be a positive integer <= {PID_MAX}"}
        self.sim_watch_set.discard(pid)
        was = self.watch_set.discard(pid)
        if was:
            for backend in self.backends:
                backend.unwatch(pid)
            log.info("unwatched pid %d", pid)
            self.save()
        return {"ok": True, "was_watched": was}

    def _add(self, pid: int, run_id: str | None, ctime: float, since_ns: int | None,
             simulate_gpu: bool) -> bool:
        """Watch `pid`; True when its run gets simulated GPUs. Watching the same process
        again (a watchdog's re-watch) keeps its since_ns and logs nothing."""
        old = next((w for w in self.watch_set.entries() if w.pid == pid), None)
        again = (old is not None and old.create_time is not None
                 and abs(old.create_time - ctime) <= 0.01 and old.run_id == run_id)
        if again and old is not None:
            since_ns = old.since_ns
        self.watch_set.add(pid, run_id, ctime, now_ns=since_ns)
        if simulate_gpu and self.simulated:
            self.sim_watch_set.add(pid, run_id, ctime, now_ns=since_ns)
        else:
            self.sim_watch_set.discard(pid)
        for backend in self.backends:
            backend.watch(pid)
        simulating = pid in self.sim_watch_set.pids()
        if not again:
            log.info("watching pid %d (run %s)%s", pid, run_id, " (simulated)" * simulating)
        return simulating

    def prune(self) -> None:
        """Forget the runners that have exited (housekeeping)."""
        exited = self.watch_set.prune(watched_alive)
        for w in exited:
            self.sim_watch_set.discard(w.pid)
            for backend in self.backends:
                backend.unwatch(w.pid)
            log.info("watched pid %d (run %s) has exited", w.pid, w.run_id)
        if exited:
            self.save()

    def save(self) -> None:
        save(self.home, list(self.watch_set.entries()), set(self.sim_watch_set.pids()))

    def restore(self) -> None:
        """Watch again the runners a previous daemon of this home watched."""
        saved = load(self.home)
        for item in saved:
            w = item.watched
            if not watched_alive(w):
                log.info("pid %d (run %s), watched by the previous daemon, has exited",
                         w.pid, w.run_id)
                continue
            assert w.create_time is not None  # load() keeps only entries that have one
            simulating = self._add(w.pid, w.run_id, w.create_time, w.since_ns,
                                   item.simulate_gpu)
            log.info("watching pid %d (run %s) again, as the previous daemon did%s", w.pid,
                     w.run_id, " (simulated)" * simulating)
        if saved:
            self.save()

    def __len__(self) -> int:
        return len(self.watch_set)
