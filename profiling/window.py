"""Measurement windows: named begin/end spans with an energy-counter reading at each edge.

Why: sampled power integrated over a window misses what happens between samples, and the
GPU energy counter is too slow to poll (about 4 ms a read on an H100). So, as Zeus does, a
runner opens a named window, and at each edge the meter first waits for queued device work
(`sync`, e.g. torch.cuda.synchronize, handed in so profiling never imports torch), then
reads the clocks, then the cumulative energy counter. Energy = end - begin.

Counters can reset (driver reload) or wrap (RAPL): an end reading below the begin reading
gives `energy_j=None` with the reason in `energy_note`, unless the wrap modulus is known.
A counter that did not advance is no reading either: a device always draws power, so a
zero delta means the window was shorter than the counter's update period (NVML's moves
about every 100 ms), and 0 J would rank as the best energy ever measured. Every family's
windows go through this one meter, so the rule holds for all of them.
A window longer than one full wrap cannot be told from a shorter one; RAPL readers here
track wraps between calls, so read them at least once per wrap period for long runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

EnergyReader = Callable[[], float | None]
"""Returns a cumulative energy counter in joules (monotonic until a reset), or None."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One closed measurement window."""

    name: str
    """Window name, e.g. 'decode' or 'train'."""
    device: str
    """Device whose energy was read, e.g. 'gpu0' or 'cpu'."""
    t0_ns: int
    """Wall clock at the start edge (after sync), time.time_ns()."""
    t1_ns: int
    """Wall clock at the end edge (after sync)."""
    energy_j: float | None
    """Counter delta over the window; None when unreadable or reset."""
    energy_source: str | None
    """Where energy_j came from ('nvml', 'rapl', ...); None when there is no counter."""
    elapsed_s: float = 0.0
    """Duration from the monotonic clock (immune to wall-clock steps)."""
    energy_note: str | None = None
    """Why energy_j is None (or how it was corrected), else None."""

    @property
    def duration_s(self) -> float:
        return self.elapsed_s

    @property
    def mean_power_w(self) -> float | None:
        """energy_j / elapsed_s (the AEC of this window)."""
        if self.energy_j is None or self.elapsed_s <= 0:
            return None
        return self.energy_j / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        """The fields of an Event.window (name, t0_ns, t1_ns, device, energy_j, ...)."""
        return {"name": self.name, "t0_ns": self.t0_ns, "t1_ns": self.t1_ns,
                "device": self.device, "energy_j": self.energy_j,
                "energy_source": self.energy_source, "elapsed_s": self.elapsed_s,
                "energy_note": self.energy_note}


class WindowHandle:
    """What `measure` yields; `result` is set when the block ends."""

    __slots__ = ("name", "result")

    def __init__(self, name: str) -> None:
        self.name = name
        self.result: WindowResult | None = None


@dataclass(frozen=True, slots=True)
class _Open:
    t0_ns: int
    mono0_ns: int
    energy0: float | None
    note: str | None


class WindowMeter:
    """Opens and closes named windows on one device; windows with different names nest."""

    def __init__(self, sync: Callable[[], None] | None = None,
                 energy_reader: EnergyReader | None = None, device: str = "cpu",
                 energy_source: str | None = None, *, wrap_j: float | None = None,
                 no_counter_note: str | None = None,
                 clock_ns: Callable[[], int] = time.time_ns,
                 mono_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        """Build a meter.

        Args:
            sync: waits for queued device work (torch.cuda.synchronize); None for CPU.
            energy_reader: cumulative energy counter in joules; None when there is none.
            device: device id recorded in results.
            energy_source: label recorded with energy_j ('nvml', 'rapl', ...).
            wrap_j: the counter's wrap modulus in joules, when it wraps rather than resets.
            no_counter_note: why there is no energy reader (stored as every window's
                energy_note when `energy_reader` is None).
            clock_ns: wall clock for t0/t1 (tests pass a fake).
            mono_ns: monotonic clock for elapsed_s (tests pass a fake).
        """
        self._sync = sync
        self._reader = energy_reader
        self.device = device
        self.energy_source = energy_source if energy_reader is not None else None
        self._wrap_j = wrap_j
        self._no_counter_note = no_counter_note or "no energy counter on this device"
        self._clock = clock_ns
        self._mono = mono_ns
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    @property
    def open_windows(self) -> list[str]:
        with self._lock:
            return list(self._open)

    def _edge(self) -> tuple[int, int, float | None, str | None]:
        if self._sync is not None:
            self._sync()
        t_ns = self._clock()
        mono = self._mono()
        if self._reader is None:
            return t_ns, mono, None, None
        try:
            energy = self._reader()
        except Exception as e:  # noqa: BLE001 - a failed read costs the energy, not the run
            return t_ns, mono, None, f"energy read failed: {type(e).__name__}: {e}"
        return t_ns, mono, energy, None if energy is not None else "energy counter unreadable"

    def begin(self, name: str) -> None:
        """Open window `name`. Raises ValueError when a window of that name is open."""
        with self._lock:
            if name in self._open:
                raise ValueError(f"window {name!r} is already open")
        t_ns, mono, energy, note = self._edge()
        with self._lock:
            if name in self._open:
                raise ValueError(f"window {name!r} is already open")
            self._open[name] = _Open(t_ns, mono, energy, note)

    def end(self, name: str) -> WindowResult:
        """Close window `name`. Raises ValueError when no window of that name is open."""
        with self._lock:
            if name not in self._open:
                raise ValueError(f"no open window named {name!r}")
        t1_ns, mono1, energy1, note1 = self._edge()
        with self._lock:
            opened = self._open.pop(name, None)
        if opened is None:
            raise ValueError(f"no open window named {name!r}")
        elapsed_s = (mono1 - opened.mono0_ns) / 1e9
        energy_j, note = self._delta(opened.energy0, energy1, opened.note or note1, elapsed_s)
        return WindowResult(name=name, device=self.device, t0_ns=opened.t0_ns, t1_ns=t1_ns,
                            energy_j=energy_j, energy_source=self.energy_source,
                            elapsed_s=elapsed_s, energy_note=note)

    def _delta(self, e0: float | None, e1: float | None, note: str | None,
               elapsed_s: float) -> tuple[float | None, str | None]:
        if self._reader is None:
            return None, self._no_counter_note
        if e0 is None or e1 is None:
            return None, note or "energy counter unreadable"
        if e1 == e0:
            return None, (f"the {self.energy_source or 'energy'} counter did not advance over "
                          f"this {elapsed_s:.3f} s window (shorter than its update period); "
                          "measure more steps for energy")
        if e1 > e0:
            return e1 - e0, None
        if self._wrap_j:
            return e1 + self._wrap_j - e0, "counter wrapped once; corrected by its modulus"
        return None, f"energy counter went backwards ({e0:.3f} J -> {e1:.3f} J): reset"

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[WindowHandle]:
        """`with meter.measure('decode') as w: ...`; w.result is set after the block.

        The window is closed even when the block raises; errors while closing it then give
        way to the block's own exception.
        """
        handle = WindowHandle(name)
        self.begin(name)
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):
                handle.result = self.end(name)
            raise
        handle.result = self.end(name)


# -- RAPL (Linux powercap) ---------------------------------------------------------------------

def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def rapl_energy_reader(root: str = "/sys/class/powercap") -> EnergyReader | None:
    """A reader of the summed package energy (joules) of every CPU socket, or None.

    Package domains are the top-level `intel-rapl:N` zones whose name starts with
    "package" (the kernel's driver for Intel and AMD); psys and sub-zones (core, uncore,
    dram) are left out, as they are parts of, or overlap with, the packages. Each raw
    counter wraps at its `max_energy_range_uj`; the reader keeps a running total across
    wraps, so it must be called at least once per wrap period (minutes at full load).
    Returns None when no package counter is readable (no RAPL, or energy_uj is root-only,
    as on kernels since 5.10); the returned reader yields None if reading later fails.
    """
    domains: list[tuple[str, int]] = []
    for zone in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        if os.path.basename(zone).count(":") != 1:
            continue
        try:
            with open(os.path.join(zone, "name")) as f:
                name = f.read().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue
        max_uj = _read_int(os.path.join(zone, "max_energy_range_uj"))
        energy_path = os.path.join(zone, "energy_uj")
        if _read_int(energy_path) is None:
            continue
        domains.append((energy_path, max_uj or 0))
    if not domains:
        return None
    last: list[int | None] = [None] * len(domains)
    total_uj = [0]
    lock = threading.Lock()

    def read() -> float | None:
        raws = [_read_int(path) for path, _ in domains]
        if any(r is None for r in raws):
            return None
        with lock:
            for i, ((_, max_uj), raw) in enumerate(zip(domains, raws, strict=True)):
                assert raw is not None
                prev = last[i]
                if prev is not None:
                    delta = raw - prev
                    if delta < 0:
                        delta += max_uj  # 0 when unknown: the wrap is lost, never negative
                    total_uj[0] += max(0, delta)
                last[i] = raw
            return total_uj[0] / 1e6

    read()  # sets the baseline: the reader counts from its creation
    return read
