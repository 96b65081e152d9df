"""Energy sources for a device, chosen by name: the NVML counter for GPUs, RAPL for the CPU.

Runner-side helpers that keep runners free of NVML: `energy_counter('cuda:0')` gives the
reader a `WindowMeter` reads at window edges (or the reason there is none),
`sample_device_for('cuda:0')` the device name the daemon's samples carry for that GPU
(`gpu<NVML index>`, which differs from the CUDA index under CUDA_VISIBLE_DEVICES).
`profiling.backends.nvml` is imported only when a GPU is asked for, so a CPU run never loads pynvml.
The host backend's RAPL power (`rapl_power_reader`) lives here too: power is the energy
counter's delta over the tick.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from profiling.window import EnergyReader, rapl_energy_reader

log = logging.getLogger("profiling.backends.energy")

RAPL_ROOT = "/sys/class/powercap"
_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")
_GPU_RE = re.compile(r"^gpu(\d+)$")


def _gpu_index(device: str, env: Mapping[str, str]) -> int | None:
    """NVML index for 'cuda[:N]' or 'gpuN'; None for anything else. May raise."""
    m = _GPU_RE.match(device)
    if m:
        return int(m.group(1))  # already a sample name: an NVML index
    m = _CUDA_RE.match(device)
    if not m:
        return None
    from profiling.backends import nvml  # lazily: only GPU callers load pynvml

    return int(nvml.nvml_index_for_cuda(int(m.group(1) or 0), env))


@dataclass(frozen=True, slots=True)
class EnergyCounter:
    """The energy counter of one device, or why it has none."""

    reader: EnergyReader | None
    """Cumulative energy in joules, read at window edges; None when there is no counter."""
    source: str | None
    """`nvml` or `rapl`; None without a counter."""
    note: str | None = None
    """Why there is no counter (stored with every energy metric left NULL); None with one."""


def energy_counter(device: str, env: Mapping[str, str] | None = None) -> EnergyCounter:
    """The energy counter of a torch device: NVML for 'cuda:N' (or 'gpuN'), RAPL for 'cpu'.

    Without a readable counter (no NVML, no energy counter, RAPL absent or root-only, MIG)
    the reader is None and `note` says why, so a run can store the reason beside every
    energy value it leaves NULL. `env` defaults to os.environ (its CUDA_VISIBLE_DEVICES
    maps cuda:N to an NVML index).
    """
    env = os.environ if env is None else env
    if device == "cpu":
        reader = rapl_energy_reader(RAPL_ROOT)
        if reader is None:
            note = f"no CPU energy counter: {rapl_status(RAPL_ROOT)[1]}"
            log.info(note)
            return EnergyCounter(None, None, note)
        return EnergyCounter(reader, "rapl")
    try:
        index = _gpu_index(device, env)
        if index is None:
            return EnergyCounter(None, None, f"no energy counter for device {device!r}")
        from profiling.backends import nvml

        return EnergyCounter(nvml.nvml_energy_reader(index), "nvml")
    except Exception as e:  # noqa: BLE001 - a missing counter costs the energy, not the run
        note = f"no energy counter for {device}: {type(e).__name__}: {e}"
        log.info(note)
        return EnergyCounter(None, None, note)


def sample_device_for(device: str, env: Mapping[str, str] | None = None) -> str:
    """The daemon's device name for a torch device: 'cpu', or 'gpu<NVML index>'.

    Falls back to 'gpu<CUDA index>' when NVML cannot map it (no NVML: nobody samples it).
    """
    env = os.environ if env is None else env
    if device == "cpu":
        return "cpu"
    m = _CUDA_RE.match(device)
    if not m:
        return device
    try:
        index = _gpu_index(device, env)
    except Exception as e:  # noqa: BLE001 - naming must not fail a run
        log.info("cannot map %s to an NVML index (%s); using the CUDA index", device, e)
        index = None
    return f"gpu{index if index is not None else int(m.group(1) or 0)}"


def rapl_status(root: str = RAPL_ROOT) -> tuple[bool, str]:
    """(readable, reason): whether RAPL package energy can be read, and why not."""
    zones = [z for z in glob.glob(os.path.join(root, "intel-rapl:*"))
             if os.path.basename(z).count(":") == 1]
    if not zones:
        return False, f"no RAPL package zones under {root} (no RAPL on this CPU or VM)"
    for zone in zones:
        try:
            with open(os.path.join(zone, "energy_uj")) as f:
                f.read()
            return True, "readable"
        except PermissionError:
            continue
        except OSError:
            continue
    return False, (f"RAPL energy_uj under {root} is not readable by this user (root-only "
                   "since Linux 5.10)")


def rapl_power_reader(root: str = RAPL_ROOT) -> Callable[[int], float | None] | None:
    """A power reader for the host backend: CPU package watts since its last call, or None
    when RAPL is not readable.

    Built on `rapl_energy_reader`, which keeps a wrap-corrected running total, so a tick
    across a counter wrap still gives the right power. The first call (no baseline), a
    failed read or a non-advancing clock give None, never 0.
    """
    energy = rapl_energy_reader(root)
    if energy is None:
        return None
    last: list[tuple[int, float] | None] = [None]

    def read(now_ns: int) -> float | None:
        joules = energy()
        if joules is None:
            last[0] = None
            return None
        prev, last[0] = last[0], (now_ns, joules)
        if prev is None or now_ns <= prev[0]:
            return None
        return (joules - prev[1]) / ((now_ns - prev[0]) / 1e9)

    return read
