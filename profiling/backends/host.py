"""The host backend: one 'cpu' Sample a tick from psutil (host memory and CPU, runner trees).

Why it is shaped this way:
- Per-process CPU % needs a baseline from the previous tick, so psutil.Process objects and
  their last CPU times are cached across ticks, keyed by pid and create time (a reused pid is
  a new process, never a continuation of the old one's counter).
- Finding a tree's children means a scan of every /proc/<pid>/stat on the host (about 1 ms
  for 70 processes, far more on a busy node), so the tree membership is refreshed at most
  once a second, or at once when the watch set changes. Reading the known members each
  tick is cheap. A child born between refreshes is counted from the refresh after its birth.
- A process whose first reading has no baseline adds nothing to cpu_pct that tick; when no
  watched process has a baseline yet, cpu_pct is None (unknown), not 0.
- power_w comes from an optional `power_reader`: `host_backend` (the daemon's factory)
  attaches RAPL package power where /sys/class/powercap is readable. The sample's source
  stays 'psutil' (the row is a psutil reading); status says power comes from 'rapl', and
  window energy for 'cpu' is labelled 'rapl'. No reader: power_w is None, never 0.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

import psutil

from profiling.backends.base import Backend, Watched, WatchSet
from profiling.backends.energy import RAPL_ROOT, rapl_power_reader, rapl_status
from profiling.sample import Sample

PowerReader = Callable[[int], float | None]
"""Given the tick's wall clock in ns, the package power in watts since the last call, or None."""

_MIN_UTIL_INTERVAL_S = 0.02
"""Host CPU % over a shorter interval is noise (jiffy resolution); report None instead."""


class _Tracked:
    """One process of a watched tree and its CPU-time baseline."""

    __slots__ = ("proc", "create_time", "cpu_s", "mono_s")

    def __init__(self, proc: psutil.Process, create_time: float) -> None:
        self.proc = proc
        self.create_time = create_time
        self.cpu_s: float | None = None
        self.mono_s = 0.0


class HostBackend(Backend):
    """psutil readings of this host as device 'cpu', source 'psutil'."""

    name = "psutil"

    def __init__(self, watch_set: WatchSet | None = None, *, host: str | None = None,
                 device: str = "cpu", tree_refresh_s: float = 1.0,
                 power_reader: PowerReader | None = None, power_note: str | None = None
                 ) -> None:
        """Build the backend.

        Args:
            watch_set: runner pids whose process trees give cpu_pct and rss_bytes; a fresh
                empty set when None.
            host: host name written in every sample; socket.gethostname() when None.
            device: device id of the host (one per host).
            tree_refresh_s: how often the members of each watched tree are rediscovered.
            power_reader: package power source (RAPL); power_w stays None without one.
            power_note: why there is no power reader (shown in status).
        """
        self.watch_set = watch_set if watch_set is not None else WatchSet()
        self.host = host or socket.gethostname()
        self.device = device
        self.tree_refresh_s = tree_refresh_s
        self.power_reader = power_reader
        self.power_note = power_note
        self._tracked: dict[int, _Tracked] = {}
        self._watch_version = -1
        self._refreshed_mono = float("-inf")
        # Prime the host-wide counter so the first tick reports the time since start.
        psutil.cpu_percent(interval=None)
        self._util_mono = time.monotonic()

    def devices(self) -> list[str]:
        return [self.device]

    def sample(self, now_ns: int) -> list[Sample]:
        mono = time.monotonic()
        vm = psutil.virtual_memory()
        util_pct: float | None = None
        if mono - self._util_mono >= _MIN_UTIL_INTERVAL_S:
            util_pct = float(psutil.cpu_percent(interval=None))
            self._util_mono = mono
        cpu_pct, rss_bytes = self._read_trees(mono)
        power_w = self.power_reader(now_ns) if self.power_reader is not None else None
        return [Sample(
            t_ns=now_ns, host=self.host, device=self.device, source="psutil",
            mem_used_bytes=int(vm.total - vm.available), mem_total_bytes=int(vm.total),
            util_pct=util_pct, power_w=power_w, cpu_pct=cpu_pct, rss_bytes=rss_bytes,
        )]

    def status(self) -> dict[str, object]:
        return {"power": "rapl" if self.power_reader is not None else None,
                "power_note": self.power_note, "tracked_pids": len(self._tracked)}

    def tracked_pids(self) -> list[int]:
        """Pids of the watched trees as of the last refresh (roots and descendants)."""
        return sorted(self._tracked)

    # -- watched process trees -------------------------------------------------------------

    def _read_trees(self, mono: float) -> tuple[float | None, int | None]:
        version, entries = self.watch_set.snapshot()
        if not entries:
            self._tracked.clear()
            self._watch_version = version
            return None, None
        if version != self._watch_version or mono - self._refreshed_mono >= self.tree_refresh_s:
            self._refresh(entries)
            self._watch_version = version
            self._refreshed_mono = mono
        cpu_pct = 0.0
        rss_bytes = 0
        any_cpu = any_rss = False
        gone = []
        for pid, tr in self._tracked.items():
            try:
                with tr.proc.oneshot():
                    if tr.proc.status() == psutil.STATUS_ZOMBIE:
                        gone.append(pid)
                        continue
                    times = tr.proc.cpu_times()
                    rss = tr.proc.memory_info().rss
            except psutil.NoSuchProcess:  # includes ZombieProcess
                gone.append(pid)
                continue
            except psutil.AccessDenied:
                continue
            rss_bytes += rss
            any_rss = True
            cpu_s = times.user + times.system
            if tr.cpu_s is not None and mono > tr.mono_s:
                cpu_pct += max(0.0, cpu_s - tr.cpu_s) / (mono - tr.mono_s) * 100.0
                any_cpu = True
            tr.cpu_s = cpu_s
            tr.mono_s = mono
        for pid in gone:
            del self._tracked[pid]
        return (cpu_pct if any_cpu else None), (rss_bytes if any_rss else None)

    def _refresh(self, entries: Sequence[Watched]) -> None:
        """Rediscover the members of every watched tree, keeping known baselines."""
        found: dict[int, psutil.Process] = {}
        for w in entries:
            root = self._root(w)
            if root is None:
                continue
            found.setdefault(root.pid, root)
            try:
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        tracked: dict[int, _Tracked] = {}
        for pid, proc in found.items():
            try:
                ctime = proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            old = self._tracked.get(pid)
            tracked[pid] = old if old is not None and old.create_time == ctime \
                else _Tracked(proc, ctime)
        self._tracked = tracked

    def _root(self, w: Watched) -> psutil.Process | None:
        old = self._tracked.get(w.pid)
        proc = old.proc if old is not None else None
        try:
            if proc is None:
                proc = psutil.Process(w.pid)
            ctime = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if w.create_time is not None and abs(ctime - w.create_time) > 0.01:
            return None  # the pid now belongs to another process
        return proc


def process_create_time(pid: int) -> float | None:
    """psutil create time of `pid`, or None when it does not exist or is a zombie."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def watched_alive(w: Watched) -> bool:
    """True while the watched runner runs (same pid and create time, not a zombie)."""
    try:
        proc = psutil.Process(w.pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            ctime = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return psutil.pid_exists(w.pid)  # cannot tell reuse; assume it is still ours
    return w.create_time is None or abs(ctime - w.create_time) <= 0.01


def host_backend(watch_set: WatchSet | None = None, *, rapl_root: str = RAPL_ROOT,
                 **kwargs: object) -> HostBackend:
    """The daemon's host backend: psutil readings plus RAPL package power when readable."""
    reader = rapl_power_reader(rapl_root)
    note = None if reader is not None else rapl_status(rapl_root)[1]
    return HostBackend(watch_set, power_reader=reader, power_note=note,
                       **kwargs)  # type: ignore[arg-type]
