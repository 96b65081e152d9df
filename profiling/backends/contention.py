"""Whether a run shared its GPU: the GPU's process list, read all through the run, with
every pid told apart as this run's own or foreign, across pid namespaces.

Why a thread in the runner, not the daemon: the runner is the one process that exists
for exactly the run, knows its own process tree, and runs with or without a daemon (a
daemon is best effort; a run it never watched must still say whether it was contended).
So `ContentionWatch` reads NVML's process list of the run's GPU once synchronously when
started, then once a second (`interval_s`) on a thread of its own, and once more
synchronously when stopped, so even a run shorter than a second is read at both ends. It
never calls the process list per step and never inside the energy-counter read (the
measuring thread reads the counter at window edges; this thread only lists processes). A
read whose pids are the same as the last one's reuses its attribution, so a steady run
costs one NVML call a second and no /proc walk. Nothing this thread does can fail the run:
a failed read is counted and makes the verdict unknown, never an exception.

The rule for one read (`Contention.observe`), for each pid NVML lists:
1. Own pids: this process, its descendants (psutil) and every entry of their
   /proc/<pid>/status `NSpid` lines (a pid namespace between us and /proc). A listed pid
   among them, or whose own NSpid entries meet them, is ours.
2. Visible: /proc/<pid> exists and, where its fds are readable, it holds a /dev/nvidia*
   node open (otherwise it is some other process that happens to have the number). A
   visible pid that is not ours is foreign, named by psutil.
3. The rest are unmapped: pids from another pid namespace (a container seeing the host's
   pids), which cannot be matched to ours by number, so they are counted. k = this run's
   CUDA processes on the GPU: own processes whose /proc/<pid>/maps map /dev/nvidia-uvm
   and the GPU's /dev/nvidia<minor> (seen on an H100, driver 580: a CUDA context maps
   both; cuInit without a context maps no uvm; NVML alone maps nothing, though it holds
   uvm open as an fd, so fds cannot tell). An unmapped pid once claimed as ours, or once
   found foreign, keeps that label while listed. Of the unknown ones, with n = k minus
   the claimed still listed: none is fine; exactly n are claimed as ours; more than n
   means the excess is foreign (all unknown ones are listed, `identified` False unless
   n <= 0, since which are ours cannot be told); fewer (but some) cannot be decided. k
   is unknown (the read undecided) when our maps cannot be read, or our fds show no
   /dev/nvidiactl although this process has NVML open (device names unreliable here).

The run's verdict (`Contention.report`): contended True when any read found a foreign
process (that is never wrong, whatever the other reads said); else None, with the reason
in `contended_note`, when no read succeeded, any read failed or any read was undecided;
else False. Unmapped pids put a remark in the note either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from profiling.backends.nvml_types import GpuProcess

log = logging.getLogger("profiling.backends.contention")

DEFAULT_INTERVAL_S = 1.0
"""Seconds between process-list reads (one NVML call each)."""
THIS, OTHER = "this", "other"
"""`ForeignProcess.pid_namespace`: the reader's pid namespace, or another (host) one."""
_NVIDIA = "/dev/nvidia"


@dataclass(frozen=True, slots=True)
class ForeignProcess:
    """A process on the run's GPU that is not the run's."""

    pid: int
    """The pid as NVML lists it (in another namespace when pid_namespace is 'other')."""
    used_gpu_memory_bytes: int | None
    """The most device memory it was seen holding; None where NVML never said."""
    first_seen_ns: int
    """Wall clock (time.time_ns()) of the first read that listed it."""
    last_seen_ns: int
    """Wall clock of the last read that listed it."""
    name: str | None
    """Its process name where visible here, else None."""
    pid_namespace: str
    """'this' (visible here) or 'other' (another pid namespace: no name, counted)."""
    identified: bool = True
    """False when it is one of several candidates of which some are the run's own."""

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "used_gpu_memory_bytes": self.used_gpu_memory_bytes,
                "first_seen_ns": self.first_seen_ns, "last_seen_ns": self.last_seen_ns,
                "name": self.name, "pid_namespace": self.pid_namespace,
                "identified": self.identified}


class ViewError(Exception):
    """This process's own tree or fds cannot be read: a read is undecided."""


def _nspids(status_path: str) -> set[int]:
    """Every pid of a process's NSpid line (one per pid namespace); empty when unreadable."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return {int(x) for x in line.split()[1:] if x.isdigit()}
    except OSError:
        pass
    return set()


class ProcessView:
    """What this pid namespace shows of processes: our own tree, /proc, fds."""

    def __init__(self, root_pid: int | None = None, proc: str = "/proc") -> None:
        """A view rooted at `root_pid` (this process when None), reading `proc`."""
        self.root = os.getpid() if root_pid is None else root_pid
        self.proc = proc

    def own(self) -> set[int]:
        """The root, its descendants and their NSpid aliases. Raises ViewError."""
        tree = self.own_tree()
        own = set(tree)
        if self.root == os.getpid():
            own |= _nspids(f"{self.proc}/self/status")
        for pid in tree:
            own |= _nspids(f"{self.proc}/{pid}/status")
        return own

    def _devices(self, pid: int | str) -> set[str] | None:
        """The /dev/nvidia* nodes `pid` holds open; None when its fds cannot be read."""
        fd_dir = f"{self.proc}/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return None
        out = set()
        for n in names:
            try:
                target = os.readlink(f"{fd_dir}/{n}")
            except OSError:
                continue
            if target.startswith(_NVIDIA):
                out.add(target)
        return out

    def fds_reliable(self) -> bool:
        """Whether fd names tell: this process has NVML open, so it holds /dev/nvidiactl."""
        return f"{_NVIDIA}ctl" in (self._devices("self") or set())

    def classify(self, pid: int, own: set[int]) -> str:
        """'own', 'foreign' (visible here, not ours) or 'unmapped' for an NVML pid."""
        if pid in own:
            return "own"
        if not os.path.isdir(f"{self.proc}/{pid}"):
            return "unmapped"
        if _nspids(f"{self.proc}/{pid}/status") & own:
            return "own"
        devices = self._devices(pid)
        if devices is not None and not devices and self.fds_reliable():
            return "unmapped"  # a bystander with the same number: NVML's pid is elsewhere
        return "foreign"

    def name(self, pid: int) -> str | None:
        import psutil

        try:
            return str(psutil.Process(pid).name())
        except psutil.Error:
            return None

    def _mapped(self, pid: int) -> set[str] | None:
        """The /dev/nvidia* files `pid` has mapped; None when its maps cannot be read."""
        out = set()
        try:
            with open(f"{self.proc}/{pid}/maps", encoding="ascii", errors="replace") as f:
                for line in f:
                    if _NVIDIA in line:
                        out.add(line.split(maxsplit=5)[-1].strip())
        except OSError:
            return None
        return out

    def cuda_processes(self, minor: int | None) -> int:
        """How many own processes have a CUDA context on GPU `minor` (its node and uvm
        mapped). Raises ViewError when that cannot be told."""
        if not self.fds_reliable():
            raise ViewError("this process's fds show no /dev/nvidiactl although it has "
                            "NVML open, so device names cannot be trusted here")
        node = f"{_NVIDIA}{minor}" if minor is not None else None
        count = 0
        for pid in sorted(self.own_tree()):
            mapped = self._mapped(pid)
            if mapped is None:
                if os.path.isdir(f"{self.proc}/{pid}"):
                    raise ViewError(f"cannot read the memory maps of this run's process {pid}")
                continue  # ended meanwhile
            if f"{_NVIDIA}-uvm" in mapped and (node is None or node in mapped):
                count += 1
        return count

    def own_tree(self) -> set[int]:
        """The root and its descendants (no aliases). Raises ViewError."""
        import psutil

        try:
            return {self.root} | {c.pid for c in psutil.Process(self.root).children(
                recursive=True)}
        except psutil.Error as e:
            raise ViewError(f"cannot list this run's processes: {e}") from e


@dataclass(frozen=True, slots=True)
class _Read:
    """One read's attribution, kept to reuse while the listed pids stay the same."""

    pids: tuple[int, ...]
    foreign: dict[int, tuple[str, str | None, bool]]
    """pid -> (pid_namespace, name, identified)."""
    decided: bool
    note: str | None


class Contention:
    """The verdict on one GPU, folded over reads (see the module docstring)."""

    def __init__(self, device: str, view: ProcessView | None = None,
                 minor: int | None = None) -> None:
        """Fold reads of `device` ('gpu<NVML index>'), telling pids apart with `view`."""
        self.device = device
        self.view = view or ProcessView()
        self.minor = minor
        self.reads = 0
        self.failed = 0
        self.undecided = 0
        self.last_error: str | None = None
        self.undecided_note: str | None = None
        self.unmapped_seen = False
        self.unsupported = False
        self._claimed: set[int] = set()
        self._known_foreign: set[int] = set()
        self._last: _Read | None = None
        self._foreign: dict[tuple[int, str], ForeignProcess] = {}
        self._lock = threading.Lock()

    def fail(self, error: str, *, unsupported: bool = False) -> None:
        """A read that failed (`unsupported`: the driver cannot list processes at all)."""
        with self._lock:
            self.reads += 1
            self.failed += 1
            self.last_error = error
            self.unsupported = self.unsupported or unsupported
            self._last = None

    def observe(self, t_ns: int, processes: Iterable[GpuProcess]) -> None:
        """Fold one read of the GPU's process list, taken at wall clock `t_ns`."""
        procs = list(processes)
        with self._lock:
            self.reads += 1
            pids = tuple(sorted(p.pid for p in procs))
            last = self._last
            read = last if last is not None and last.decided and last.pids == pids \
                else self._attribute(pids)
            self._last = read
            if not read.decided:
                self.undecided += 1
                self.undecided_note = read.note
            for p in procs:
                if p.pid in read.foreign:
                    ns, name, identified = read.foreign[p.pid]
                    self._record(p, t_ns, ns, name, identified)

    def _attribute(self, pids: tuple[int, ...]) -> _Read:
        view = self.view
        try:
            own = view.own() if pids else set()
        except ViewError as e:
            return _Read(pids, {}, False, f"{e}")
        foreign: dict[int, tuple[str, str | None, bool]] = {}
        unmapped = []
        for pid in pids:
            where = view.classify(pid, own)
            if where == "foreign":
                foreign[pid] = (THIS, view.name(pid), True)
            elif where == "unmapped":
                unmapped.append(pid)
        if not unmapped:
            return _Read(pids, foreign, True, None)
        self.unmapped_seen = True
        listed = set(unmapped)
        self._claimed &= listed
        self._known_foreign &= listed
        for pid in self._known_foreign:
            foreign[pid] = (OTHER, None, True)
        unknown = sorted(listed - self._claimed - self._known_foreign)
        if not unknown:
            return _Read(pids, foreign, True, None)
        try:
            k = view.cuda_processes(self.minor)
        except ViewError as e:
            return _Read(pids, foreign, bool(foreign),
                         f"{len(unknown)} process(es) with pids from another pid namespace "
                         f"could not be told apart from this run's: {e}")
        need = k - len(self._claimed)
        if need <= 0:
            self._known_foreign.update(unknown)
            foreign.update((pid, (OTHER, None, True)) for pid in unknown)
        elif len(unknown) == need:
            self._claimed.update(unknown)
        elif len(unknown) > need:
            foreign.update((pid, (OTHER, None, False)) for pid in unknown)
        else:
            return _Read(pids, foreign, bool(foreign),
                         f"NVML listed {len(unknown)} unclaimed process(es) with pids from "
                         f"another pid namespace while this run had {need} CUDA process(es) "
                         "not yet matched: which are ours cannot be told")
        return _Read(pids, foreign, True, None)

    def _record(self, p: GpuProcess, t_ns: int, ns: str, name: str | None,
                identified: bool) -> None:
        key = (p.pid, ns)
        old = self._foreign.get(key)
        if old is None:
            self._foreign[key] = ForeignProcess(p.pid, p.used_gpu_memory_bytes, t_ns, t_ns,
                                                name, ns, identified)
            return
        mem = old.used_gpu_memory_bytes
        if p.used_gpu_memory_bytes is not None:
            mem = p.used_gpu_memory_bytes if mem is None else max(mem, p.used_gpu_memory_bytes)
        self._foreign[key] = replace(old, used_gpu_memory_bytes=mem, last_seen_ns=t_ns,
                                     name=old.name or name,
                                     identified=old.identified and identified)

    @property
    def foreign(self) -> list[ForeignProcess]:
        with self._lock:
            return sorted(self._foreign.values(), key=lambda f: (f.first_seen_ns, f.pid))

    def verdict(self) -> tuple[bool | None, str | None]:
        """(contended, note) per the module docstring's rule."""
        foreign = self.foreign
        notes = []
        if self.unmapped_seen:
            notes.append("NVML listed pids from another pid namespace (a container seeing "
                         "host pids); they were told apart by counting this run's CUDA "
                         "processes")
        if any(not f.identified for f in foreign):
            notes.append("some listed candidates are this run's own: which cannot be told")
        ok = self.reads - self.failed
        if not foreign:
            if self.unsupported:
                notes.insert(0, "this driver does not list the processes on the GPU")
            elif ok == 0:
                notes.insert(0, "the GPU's process list was never read"
                             + (f": {self.last_error}" if self.last_error else ""))
            elif self.failed:
                notes.insert(0, f"{self.failed} of {self.reads} process-list reads failed "
                                f"(last: {self.last_error})")
            if self.undecided:
                notes.insert(0, f"{self.undecided} of {self.reads} reads undecided: "
                                f"{self.undecided_note}")
        note = "; ".join(notes) or None
        if foreign:
            return True, note
        if ok == 0 or self.failed or self.undecided:
            return None, note
        return False, note

    def report(self) -> dict[str, Any]:
        """The run result's info keys: contended, contended_note, foreign_processes,
        foreign_pids (the pids alone, kept for older readers), contention_reads."""
        contended, note = self.verdict()
        foreign = self.foreign
        listed = self.reads > self.failed
        return {"contended": contended, "contended_note": note,
                "foreign_processes": [{**f.to_dict(), "device": self.device} for f in foreign]
                if listed or foreign else None,
                "foreign_pids": sorted({f.pid for f in foreign}),
                "contention_reads": self.reads}


def unknown_report(note: str) -> dict[str, Any]:
    """The info keys of a run whose GPU process list could not be read at all (CPU runs,
    no NVML)."""
    return {"contended": None, "contended_note": note, "foreign_processes": None,
            "foreign_pids": [], "contention_reads": 0}


class ContentionWatch:
    """Reads one GPU's process list through a run on a thread of its own."""

    def __init__(self, reader: Callable[[], list[GpuProcess]], contention: Contention,
                 interval_s: float = DEFAULT_INTERVAL_S,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        """A watch feeding `contention` from `reader` every `interval_s` once started."""
        self.reader = reader
        self.contention = contention
        self.interval_s = interval_s
        self._clock = clock_ns
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> None:
        """One read, folded; never raises (a failure is recorded instead)."""
        from profiling.backends.nvml_errors import NvmlNotSupported

        try:
            processes = self.reader()
        except NvmlNotSupported as e:
            self.contention.fail(f"{e}", unsupported=True)
            return
        except Exception as e:  # noqa: BLE001 - a neighbour check must never fail a run
            self.contention.fail(f"{type(e).__name__}: {e}")
            return
        try:
            self.contention.observe(self._clock(), processes)
        except Exception as e:  # noqa: BLE001
            log.exception("attributing the GPU's processes failed")
            self.contention.fail(f"attribution failed: {type(e).__name__}: {e}")

    def start(self) -> ContentionWatch:
        """Read once now, then every interval on a daemon thread."""
        self.read_once()
        self._thread = threading.Thread(target=self._loop, name="contention", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read_once()

    def stop(self) -> dict[str, Any]:
        """Stop the thread, read once more, and return the run's info keys."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.read_once()
        return self.contention.report()


def watch_device(device: str, interval_s: float | None = None,
                 view: ProcessView | None = None) -> ContentionWatch:
    """A started watch of torch device `device` ('cuda:N', mapped through
    CUDA_VISIBLE_DEVICES to its NVML index), reading every `interval_s` (default
    DEFAULT_INTERVAL_S). Raises when NVML cannot be used."""
    from profiling.backends import nvml  # lazily: CPU runs never load pynvml

    index = nvml.nvml_index_for_cuda(int(device.partition(":")[2] or 0))
    reader, minor = nvml.gpu_process_reader(index)
    return ContentionWatch(reader, Contention(f"gpu{index}", view, minor),
                           DEFAULT_INTERVAL_S if interval_s is None else interval_s).start()
