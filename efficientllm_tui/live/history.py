"""Per-device ring buffers of live samples, kept by the app so redraws may drop, data never.

Why two tiers: the dashboard shows 1 min, 5 min or the whole run. Ten minutes at full
rate (10 Hz) stay in a fine ring; older data is kept one sample a second in a coarse ring,
which covers hours of a long run in a bounded amount of memory. A chart asks for a window
and gets the finest data that covers it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from profiling.sample import Sample

FINE_CAPACITY = 6_000
"""Samples per device at full rate (10 minutes at 10 Hz)."""
COARSE_CAPACITY = 21_600
"""One-a-second samples per device (6 hours)."""
_SECOND_NS = 1_000_000_000


class DeviceSeries:
    """The samples of one device, oldest first, in a fine and a coarse ring."""

    def __init__(
        self, fine_capacity: int = FINE_CAPACITY, coarse_capacity: int = COARSE_CAPACITY
    ) -> None:
        self.fine: deque[Sample] = deque(maxlen=fine_capacity)
        self.coarse: deque[Sample] = deque(maxlen=coarse_capacity)
        self.last_t_ns = -1

    def add(self, sample: Sample) -> bool:
        """Append one sample; False when it is not newer than the last one (a replay overlap)."""
        if sample.t_ns <= self.last_t_ns:
            return False
        if not self.coarse or sample.t_ns // _SECOND_NS != self.coarse[-1].t_ns // _SECOND_NS:
            self.coarse.append(sample)
        self.fine.append(sample)
        self.last_t_ns = sample.t_ns
        return True

    @property
    def latest(self) -> Sample | None:
        return self.fine[-1] if self.fine else None

    def window(self, t0_ns: int, t1_ns: int | None = None) -> list[Sample]:
        """Samples with t0_ns <= t_ns (<= t1_ns), oldest first, at the finest rate available."""
        if not self.fine:
            return []
        source: Iterable[Sample]
        if self.fine[0].t_ns <= t0_ns or len(self.fine) < (self.fine.maxlen or 0):
            source = self.fine
        else:  # the window reaches before the fine ring: coarse up to it, then fine
            first_fine = self.fine[0].t_ns
            older = [s for s in _since(self.coarse, t0_ns) if s.t_ns < first_fine]
            return older + _clip(_since(self.fine, t0_ns), t1_ns)
        return _clip(_since(source, t0_ns), t1_ns)


def _since(ring: Iterable[Sample], t0_ns: int) -> list[Sample]:
    """The tail of a time-ordered ring from t0_ns on, scanning from the newest end."""
    out: list[Sample] = []
    for s in reversed(ring):  # type: ignore[call-overload]
        if s.t_ns < t0_ns:
            break
        out.append(s)
    out.reverse()
    return out


def _clip(samples: list[Sample], t1_ns: int | None) -> list[Sample]:
    if t1_ns is None:
        return samples
    return [s for s in samples if s.t_ns <= t1_ns]


class SampleHistory:
    """Every device's series; `version` grows with each accepted sample (redraw when it moves)."""

    def __init__(
        self, fine_capacity: int = FINE_CAPACITY, coarse_capacity: int = COARSE_CAPACITY
    ) -> None:
        self._fine = fine_capacity
        self._coarse = coarse_capacity
        self.devices: dict[str, DeviceSeries] = {}
        self.version = 0
        self.received = 0
        self.simulated = False
        """True once any sample came from the simulated backend (the UI must say so)."""

    def extend(self, samples: Iterable[Sample]) -> int:
        """Add samples (any device order); returns how many were new."""
        added = 0
        for s in samples:
            self.received += 1
            series = self.devices.get(s.device)
            if series is None:
                series = self.devices[s.device] = DeviceSeries(self._fine, self._coarse)
            if series.add(s):
                added += 1
                if s.source == "simulated":
                    self.simulated = True
        self.version += added
        return added

    def device_names(self) -> list[str]:
        """GPUs in index order, then the host (`cpu`), then anything else."""

        def key(name: str) -> tuple[int, int, str]:
            if name.startswith("gpu") and name[3:].isdigit():
                return (0, int(name[3:]), name)
            return (1 if name == "cpu" else 2, 0, name)

        return sorted(self.devices, key=key)

    def latest(self, device: str) -> Sample | None:
        series = self.devices.get(device)
        return series.latest if series else None

    def last_t_ns(self) -> int | None:
        """The newest sample time over all devices."""
        times = [d.last_t_ns for d in self.devices.values() if d.last_t_ns >= 0]
        return max(times) if times else None

    def window(self, device: str, t0_ns: int, t1_ns: int | None = None) -> list[Sample]:
        series = self.devices.get(device)
        return series.window(t0_ns, t1_ns) if series else []

    def __iter__(self) -> Iterator[str]:
        return iter(self.device_names())


def source_label(sample: Sample | None) -> str:
    """What produced a device's numbers: gpm, nvml, psutil, rapl or simulated.

    An NVML row whose GPM fields are set is GPM data (profiling.sample.Sample.source); a
    host row with package power reads RAPL for that number.
    """
    if sample is None:
        return "-"
    if sample.source == "nvml" and sample.sm_active_pct is not None:
        return "gpm"
    if sample.source == "psutil" and sample.power_w is not None:
        return "psutil+rapl"
    return sample.source


def energy_integral_j(samples: list[Sample], t0_ns: int) -> float | None:
    """Trapezoid integral of power_w from t0_ns to the last sample (None without power)."""
    pts = [(s.t_ns, s.power_w) for s in samples if s.t_ns >= t0_ns and s.power_w is not None]
    if len(pts) < 2:
        return None
    total = 0.0
    for (ta, pa), (tb, pb) in zip(pts, pts[1:], strict=False):
        total += (tb - ta) / 1e9 * (pa + pb) / 2  # type: ignore[operator]
    return total
