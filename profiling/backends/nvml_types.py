"""Plain data of the NVML backend: the typed readings, the state kept for each GPU and the
clamping of GPM metric values. Nothing here calls NVML (`profiling.backends.nvml` does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One sweep of one GPU's NVML readings. None means unknown (unsupported or failed)."""

    mem_used_bytes: int | None
    """Device memory in use (nvmlDeviceGetMemoryInfo v2 where available, else v1)."""
    mem_total_bytes: int | None
    """Device memory size."""
    mem_reserved_bytes: int | None
    """Memory the driver and firmware set aside (v2 only)."""
    util_pct: float | None
    """utilization.gpu: percent of the last sample period in which a kernel ran."""
    power_w: float | None
    """Board power: instant field where supported, else the ~1 s average."""
    sm_clock_mhz: float | None
    """Current SM clock."""
    temp_c: float | None
    """GPU die temperature."""


@dataclass(frozen=True, slots=True)
class GpmReading:
    """GPM metrics over one interval between two GPM samples."""

    t_ns: int
    """Wall clock of the later GPM sample."""
    mono_s: float
    """Monotonic clock of the later GPM sample (staleness check)."""
    interval_s: float
    """Seconds between the two GPM samples."""
    sm_active_pct: float | None
    """NVML_GPM_METRIC_SM_UTIL: percent of SMs busy, averaged over the interval."""
    tensor_active_pct: float | None
    """NVML_GPM_METRIC_ANY_TENSOR_UTIL."""
    dram_active_pct: float | None
    """NVML_GPM_METRIC_DRAM_BW_UTIL."""


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """One process NVML lists on a GPU (compute or graphics context)."""

    pid: int
    """The pid in the driver's pid namespace (the host's), which may not be the reader's."""
    used_gpu_memory_bytes: int | None
    """Device memory the process holds; None where NVML does not say."""


class Gpu:
    """One GPU: its handle, how each reading is taken, and what went wrong with it."""

    def __init__(self, index: int, handle: Any) -> None:
        self.index = index
        self.device = f"gpu{index}"
        self.handle = handle
        self.name: str | None = None
        self.uuid: str | None = None
        self.memory_api: str | None = None
        self.power_api: str | None = None
        self.gpm_note: str | None = None
        self.gpm_buffers: list[Any] = []
        self.gpm_prev: tuple[Any, float, int] | None = None   # (buffer, mono_s, t_ns)
        self.gpm: GpmReading | None = None
        self.lost = False
        self.lost_reason: str | None = None
        self.read_errors = 0
        self.last_error: str | None = None

    def status(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "uuid": self.uuid,
                "memory_api": self.memory_api, "power": self.power_api,
                "gpm": self.gpm_note, "lost": self.lost, "lost_reason": self.lost_reason,
                "read_errors": self.read_errors, "last_error": self.last_error}


def pct(v: float) -> float | None:
    v = float(v)
    return None if v != v else min(100.0, max(0.0, v))  # NaN is unknown, not 0
