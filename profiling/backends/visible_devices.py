"""CUDA device -> NVML index: CUDA_VISIBLE_DEVICES read as CUDA reads it (no NVML here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class VisibleDevicesError(ValueError):
    """CUDA_VISIBLE_DEVICES does not let this CUDA device be mapped to an NVML index."""


def parse_visible_devices(value: str, count: int, uuids: Callable[[], Sequence[str]]
                          ) -> list[int]:
    """NVML indices of the GPUs CUDA sees, in CUDA order, as CUDA reads CUDA_VISIBLE_DEVICES.

    Entries are NVML indices or GPU UUIDs (`GPU-` followed by a unique prefix); like CUDA,
    the list ends at the first entry that is invalid, out of range or repeated. MIG
    instances (`MIG-...`) are refused with VisibleDevicesError: their NVML handles differ.
    `uuids()` lists the UUIDs by NVML index; it is called only when an entry needs it.
    """
    out: list[int] = []
    all_uuids: Sequence[str] | None = None
    for raw in value.split(","):
        entry = raw.strip()
        if entry.upper().startswith("MIG-"):
            raise VisibleDevicesError(
                f"CUDA_VISIBLE_DEVICES={value!r} names a MIG instance; MIG devices are not "
                "supported by the profiler (GPM and energy are per physical GPU)")
        if entry.upper().startswith("GPU-"):
            if all_uuids is None:
                all_uuids = [u.upper() for u in uuids()]
            hits = [i for i, u in enumerate(all_uuids) if u.startswith(entry.upper())]
            if len(hits) != 1:
                break  # unknown or ambiguous prefix ends the list, as in CUDA
            index = hits[0]
        else:
            try:
                index = int(entry)
            except ValueError:
                break
            if not 0 <= index < count:
                break
        if index in out:
            break
        out.append(index)
    return out
