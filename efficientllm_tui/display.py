"""How numbers, sizes, durations and ids are written on screen (one place, one style)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from profiling import metric_catalog

GIB = 1024**3

def metric_label(name: str) -> str:
    """`AEC W` for `aec_w`: the one metric catalog's label and short unit; the raw id for
    metrics it does not know."""
    return metric_catalog.label(name)


def num(value: Any, digits: int = 4) -> str:
    """A compact number: `-` for unknown, 4 significant digits, scientific when tiny/huge."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1e6 or abs(value) < 1e-3:
            return f"{value:.{max(1, digits - 2)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: float | None) -> str:
    """`57%`, or `-` when unknown (never a fake 0)."""
    return "-" if value is None else f"{value:.0f}%"


def gib(n_bytes: float | None) -> str:
    """Bytes as GiB with one decimal (`34.2`), or `-`."""
    return "-" if n_bytes is None else f"{n_bytes / GIB:.1f}"


def joules(value: float | None) -> str:
    """Energy with a readable prefix: `812 J`, `22.3 kJ`, `1.4 MJ`."""
    if value is None:
        return "-"
    for scale, unit in ((1e6, "MJ"), (1e3, "kJ")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} J"


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h04m`; `-` when unknown."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def ago(seconds: float | None) -> str:
    """How long ago, coarse: `just now`, `5m ago`, `3h ago`, `2d ago`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def short_id(run_id: str, width: int = 22) -> str:
    """A run id cut from the left when long (the tail names the pair, the head the time)."""
    return run_id if len(run_id) <= width else "…" + run_id[-(width - 1) :]


def run_label(run: Mapping[str, Any], width: int | None = None) -> str:
    """`technique (id tail)`: how `compare` names a run in its table and its chart.

    Args:
        run: A runs record (technique, run_id).
        width: Cut a long technique (never the id) so the label fits this many characters.
    """
    technique, tail = str(run.get("technique")), f" ({str(run.get('run_id'))[-12:]})"
    if width is not None and len(technique) + len(tail) > width:
        technique = technique[: max(1, width - len(tail) - 1)] + "…"
    return technique + tail


def status_style(status: str | None) -> str:
    """Rich style name for a run status (theme-independent ANSI names stay readable)."""
    return {
        "ok": "green",
        "running": "cyan",
        "queued": "blue",
        "failed": "red",
        "oom": "magenta",
        "orphaned": "yellow",
        "cancelled": "yellow",
    }.get(status or "", "")


def contention(run: Mapping[str, Any]) -> str | None:
    """Whether a run shared its GPU, as `show` and the detail screen say it: `no`,
    `yes — pid 4242 (python, 1.2 GiB) on gpu0`, or `unknown — <why>`; None when the run
    recorded nothing about it (profiling/contention.py decides; runs.info keeps the facts)."""
    info = run.get("info")
    info = info if isinstance(info, Mapping) else {}
    value = run.get("contended")
    value = info.get("contended") if value is None else value
    note = info.get("contended_note")
    if value is None:
        return f"unknown — {note}" if note else None
    if not value:
        return "no" + (f" ({note})" if note else "")
    procs = info.get("foreign_processes") or [{"pid": p} for p in info.get("foreign_pids") or ()]
    parts = []
    for p in procs:
        name = p.get("name") or ("host pid" if p.get("pid_namespace") == "other" else "?")
        mem = p.get("used_gpu_memory_bytes")
        parts.append(f"pid {p.get('pid')} ({name}, "
                     f"{'memory unknown' if mem is None else f'{gib(mem)} GiB'})")
    devices = sorted({str(p["device"]) for p in procs if p.get("device")})
    text = "yes — " + (", ".join(parts) or "which processes was not recorded")
    text += f" on {', '.join(devices)}" if devices else ""
    return text + (f" ({note})" if note else "")
