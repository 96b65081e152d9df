"""The device a run uses: resolving `auto`, syncing it, its memory counters, its measurement
windows, and the versions of the stack that ran on it (for the `started` event)."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Callable
from importlib import metadata
from typing import Any

from profiling.backends.energy import energy_counter
from profiling.window import WindowMeter
from runners.errors import Unsupported

GIB = float(2**30)
_PACKAGES = ("transformers", "peft", "optimum-quanto")


def resolve(requested: str) -> str:
    """`auto` -> `cuda:0` when CUDA is usable, else `cpu`; `cuda` -> `cuda:0`.

    Raises Unsupported when a CUDA device is asked for and this machine has no such device.
    """
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    index = int(requested.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        raise Unsupported(f"device {requested!r} asked for, but torch sees no CUDA device "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    count = torch.cuda.device_count()
    if index >= count:
        raise Unsupported(f"device {requested!r} asked for, but this machine has {count} "
                          f"CUDA device(s) (cuda:0-cuda:{count - 1})")
    return f"cuda:{index}"


def make_current(device: str) -> None:
    """Make a resolved `cuda:N` this process's current CUDA device (a no-op for `cpu`): what
    does not name a device goes to the current one, Triton kernel launches and CUDA graph
    capture among them, so a run on cuda:1 must not leave cuda:0 current."""
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(int(device.partition(":")[2]))


def host() -> str:
    return socket.gethostname()


def versions() -> dict[str, str | None]:
    """torch, transformers, peft, optimum-quanto, cuda and driver versions; None when absent."""
    import torch

    out: dict[str, str | None] = {"torch": torch.__version__}
    for dist in _PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    out["driver"] = _driver_version()
    return out


def _driver_version() -> str | None:
    """The NVIDIA kernel driver version from /proc (no NVML in runners), else None."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return None
    for word in first.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def sync_fn(device: str) -> Callable[[], None] | None:
    """The function that waits for queued work on `device` (None on CPU: nothing queues)."""
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return None


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads; by default one fewer than the CPUs this process may use.

    Leaving a CPU free is deliberate: intra-op threads meet at a barrier after every op, so
    when another process (the profiling daemon, the TUI, a test) takes one of their CPUs,
    each barrier waits a scheduler slice. Measured on 2 CPUs with one busy neighbour, tiny
    decode ran 2.5x slower with 2 threads than with 1, while idle the two were equal.
    """
    import torch

    if threads is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        threads = max(1, usable - 1)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_gib(device: str) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) GiB since the last reset; (None, None) off CUDA."""
    if not device.startswith("cuda"):
        return None, None
    import torch

    dev = torch.device(device)
    return (torch.cuda.max_memory_allocated(dev) / GIB,
            torch.cuda.max_memory_reserved(dev) / GIB)


def peak_rss_gib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def memory_facts(device: str) -> dict[str, Any]:
    """Peak memory facts for a failed run's info."""
    allocated, reserved = peak_memory_gib(device)
    return {"peak_allocated_gib": allocated, "peak_reserved_gib": reserved,
            "peak_rss_gib": peak_rss_gib()}


def gpu_name(device: str) -> str | None:
    """The CUDA device's marketing name (e.g. 'NVIDIA H100 80GB HBM3'); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def window_meter(device: str, sync: Callable[[], None] | None, sample_device: str
                 ) -> WindowMeter:
    """Windows on `device`: NVML energy for GPUs, RAPL for the CPU (where readable); without
    a counter every window's energy_note says why (profiling.backends.energy)."""
    counter = energy_counter(device)
    return WindowMeter(sync=sync, energy_reader=counter.reader, device=sample_device,
                       energy_source=counter.source, no_counter_note=counter.note)
