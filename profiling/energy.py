"""Energy sources for a device, chosen by name: the NVML counter for GPUs, RAPL for the CPU.

Runner-side helpers that keep runners free of NVML: `energy_reader_for('cuda:0')` gives the
reader a `WindowMeter` reads at window edges, `sample_device_for('cuda:0')` the device name
the daemon's samples carry for that GPU (`gpu<NVML index>`, which differs from the CUDA
index under CUDA_VISIBLE_DEVICES). `profiling.nvml` is imported only when a GPU is asked
for, so a CPU run never loads pynvml. The host backend's RAPL power (`rapl_power_reader`)
lives here too: power is the energy counter's delta over the tick.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Mapping

from profiling.window import EnergyReader, rapl_energy_reader

log = logging.getLogger("profiling.energy")

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
    from profiling import nvml  # lazily: only GPU callers load pynvml

    return int(nvml.nvml_index_for_cuda(int(m.group(1) or 0), env))


def energy_reader_for(device: str, env: Mapping[str, str] | None = None
                      ) -> tuple[EnergyReader | None, str | None]:
    """(reader, source) for a torch device string: NVML for 'cuda:N', RAPL for 'cpu'.

    (None, None) where the device has no readable counter (no NVML, no energy counter,
    RAPL root-only, MIG); the reason is logged. `env` defaults to os.environ (its
    CUDA_VISIBLE_DEVICES maps cuda:N to an NVML index).
    """
    env = os.environ if env is None else env
    if device == "cpu":
        reader = rapl_energy_reader(RAPL_ROOT)
        if reader is None:
            log.info("no CPU energy counter: %s", rapl_status(RAPL_ROOT)[1])
            return None, None
        return reader, "rapl"
    try:
        index = _gpu_index(device, env)
        if index is None:
            log.info("no energy counter for device %r", device)
            return None, None
        from profiling import nvml

        return nvml.nvml_energy_reader(index), "nvml"
    except Exception as e:  # noqa: BLE001 - a missing counter costs the energy, not the run
        log.info("no energy counter for %s: %s: %s", device, type(e).__name__, e)
        return None, None


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
