"""The Sample record: one reading of one device at one instant."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

SOURCES = ("nvml", "gpm", "psutil", "rapl", "simulated")


class SampleError(ValueError):
    """A sample that does not follow the record's rules."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one device at one instant. None means unknown, never 0."""

    t_ns: int
    """Wall clock, time.time_ns(), on the sampling host."""
    host: str
    """Host name of the machine that took the sample."""
    device: str
    """'gpu0', 'gpu1', ... or 'cpu'."""
    source: str
    """Where the row came from: 'nvml' (a GPU read through NVML), 'psutil' (the host),
    'simulated' (never real), or 'gpm' / 'rapl' for rows made by those sources alone.

    One row holds one device's readings at one tick, so it carries one label: an NVML row
    whose GPM fields are set stays 'nvml' (GPM results ride on NVML rows; the GPM fields
    are filled from GPM and nothing else, so their presence says GPM, and `metrics.pcu`
    reports pcu_source 'gpm' from it), and a host row whose power_w comes from RAPL stays
    'psutil' (the daemon status names RAPL as its power source)."""
    mem_used_bytes: int | None = None
    """Device memory in use (GPU: NVML; CPU: host memory in use)."""
    mem_total_bytes: int | None = None
    """Device memory size (GPU: NVML; CPU: host total memory)."""
    util_pct: float | None = None
    """NVML utilization.gpu (a kernel was running), or host-wide CPU % for 'cpu'."""
    sm_active_pct: float | None = None
    """GPM SM activity (NVML_GPM_METRIC_SM_UTIL over the last GPM interval, >= 100 ms)
    where the GPU supports it; None elsewhere, never 0, and never utilization.gpu."""
    tensor_active_pct: float | None = None
    """GPM tensor-core activity (any tensor pipe); None where unsupported."""
    dram_active_pct: float | None = None
    """GPM DRAM bandwidth utilization; None where unsupported."""
    power_w: float | None = None
    """Instant board power (GPU) or package power from RAPL deltas (CPU)."""
    sm_clock_mhz: float | None = None
    """SM clock."""
    temp_c: float | None = None
    """GPU temperature."""
    cpu_pct: float | None = None
    """CPU % of the watched runner process trees, summed over cores (may exceed 100)."""
    rss_bytes: int | None = None
    """Resident set size of the watched runner process trees."""

    def __post_init__(self) -> None:
        if not isinstance(self.t_ns, int) or self.t_ns < 0:
            raise SampleError(f"invalid t_ns {self.t_ns!r}")
        if not self.device:
            raise SampleError("device is empty")
        if self.source not in SOURCES:
            raise SampleError(f"unknown sample source {self.source!r}")

    @property
    def simulated(self) -> bool:
        return self.source == "simulated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        if not isinstance(data, Mapping):
            raise SampleError("a sample must be a JSON object")
        known = FIELD_NAMES
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise SampleError(f"incomplete sample: {e}") from e

    @classmethod
    def from_json(cls, line: str) -> Sample:
        try:
            return cls.from_dict(json.loads(line))
        except json.JSONDecodeError as e:
            raise SampleError(f"sample is not valid JSON: {e}") from e


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Sample))
"""Column order used by the spool reader and the store's `samples` table."""
