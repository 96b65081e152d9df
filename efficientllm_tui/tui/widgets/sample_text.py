"""A device's latest sample in a few words: the summaries beside the dashboard's charts."""

from __future__ import annotations

from efficientllm_tui.display import gib, num
from efficientllm_tui.live.history import source_label
from profiling.sample import Sample


def mem_summary(s: Sample | None) -> str:
    """Memory in use of a device's latest sample (a CPU run: the runner's and the host's)."""
    if s is None or s.mem_used_bytes is None:
        return "-"
    frac = f" ({s.mem_used_bytes / s.mem_total_bytes:.0%})" if s.mem_total_bytes else ""
    used = f"{gib(s.mem_used_bytes)} / {gib(s.mem_total_bytes)} GiB{frac}"
    if s.device == "cpu" and s.rss_bytes is not None:
        host = f"{gib(s.mem_used_bytes)}/{gib(s.mem_total_bytes)}"
        return f"runner {gib(s.rss_bytes)} · host {host} GiB"
    return used


def act_summary(s: Sample | None, ncpu: int) -> str:
    """Activity of the latest sample: SM and tensor-core activity where GPM reads them, else
    NVML's utilisation (said to be a kernel-running fraction); host and runner CPU."""
    if s is None:
        return "-"
    if s.device == "cpu":
        runner = f" · runner {s.cpu_pct / ncpu:.0f}%" if s.cpu_pct is not None else ""
        return f"host {num(s.util_pct, 3)}%{runner} · {source_label(s)}"
    if s.sm_active_pct is not None:
        tc = f" TC {s.tensor_active_pct:.0f}%" if s.tensor_active_pct is not None else ""
        return f"SM {s.sm_active_pct:.0f}%{tc} · {source_label(s)}"
    return f"util {num(s.util_pct, 3)}% · nvml (kernel running, not SM activity)"


def clock_summary(s: Sample | None) -> str:
    """SM clock and temperature of the latest sample, where read."""
    if s is None:
        return "-"
    parts = []
    if s.sm_clock_mhz is not None:
        parts.append(f"{s.sm_clock_mhz:.0f} MHz")
    if s.temp_c is not None:
        parts.append(f"{s.temp_c:.0f} °C")
    return " · ".join(parts) or "no clock/temperature reading"
