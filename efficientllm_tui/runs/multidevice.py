"""The sampled metrics of a run on several devices: AMU, PCU and coverage per device and
their mean, the power integral summed (runners.distributed says how the runner's own
numbers combine; this is the ingest's half, from the profiling samples)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from profiling.sample import Sample

MEANED = ("amu", "amu_gib", "pcu", "sample_coverage")
"""Per-device values whose run value is the mean over the run's devices."""
SUMMED = ("energy_integral_j",)
"""Per-device values whose run value is the sum over the run's devices."""

PerDevice = Callable[[list[Sample], str], tuple[list[dict[str, Any]], str | None]]


def sample_devices(started: Any, fallback: str) -> list[str]:
    """The spool devices a run sampled: the `started` event's `sample_devices` (a run on
    several devices), else `[fallback]`."""
    named = started.get("sample_devices") if started is not None else None
    if isinstance(named, list) and named and all(isinstance(d, str) and d for d in named):
        return sorted(set(named))
    return [fallback]


def metrics(samples: list[Sample], devices: Sequence[str], per_device: PerDevice
            ) -> tuple[list[dict[str, Any]], str | None]:
    """Every device's metrics named `<metric>_<device>`, and the run's: MEANED over the
    devices (NULL with a note when one device has none), SUMMED added up."""
    per: dict[str, dict[str, dict[str, Any]]] = {}
    pcu_source = None
    for dev in devices:
        rows, source = per_device(samples, dev)
        per[dev] = {m["name"]: m for m in rows}
        pcu_source = pcu_source or source
    out: list[dict[str, Any]] = []
    names = [n for n in (*MEANED, *SUMMED) if any(n in rows for rows in per.values())]
    for name in names:
        found = [per[dev].get(name) for dev in devices]
        values = [r.get("value") if r else None for r in found]
        first = next(r for r in found if r)
        if all(v is not None for v in values):
            value: float | None = sum(values) / (len(values) if name in MEANED else 1)  # type: ignore[arg-type]
            note = next((r.get("note") for r in rows if r and r.get("note")), None)
        else:
            value = None
            missing = [d for d, v in zip(devices, values, strict=True) if v is None]
            note = f"no value for {', '.join(missing)} of the run's devices " \
                   f"({', '.join(devices)})"
        how = "mean" if name in MEANED else "sum"
        out.append({"name": name, "value": value, "unit": first["unit"],
                    "source": first["source"] if value is not None else "none",
                    "note": note if value is None else
                    (f"{how} over {len(devices)} devices" + (f"; {note}" if note else ""))})
        for dev, row in zip(devices, rows, strict=True):
            if row:
                out.append({**row, "name": f"{name}_{dev}"})
    return out, pcu_source
