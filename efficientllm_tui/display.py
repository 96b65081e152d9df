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


# --------------------------------------------------------------------------- SQL values

NULL_TEXT = "NULL"
"""How a SQL NULL reads in the console's grid and in `sql --format table` (CSV leaves the
field empty, JSON writes null)."""


def sql_cell(value: Any, *, exact: bool = False) -> str:
    """One value of a SQL result as text, the same in the console's grid and the CLI.

    DuckDB's own spelling where it has one: INTERVAL `1 year 2 months 3 days 04:05:06.5`,
    TIMESTAMP `2026-01-02 03:04:05`, TIMESTAMPTZ `... +00`, DECIMAL `1.50`, BOOLEAN
    `true`, LIST `[1, NULL]`, STRUCT `{'a': 1, 'b': x}`, MAP `{k=1}`, BLOB `\\x00ab`.

    Args:
        value: A value as Arrow's `to_pylist` gives it.
        exact: Write floats in full (CSV); otherwise 4 significant digits (`num`).
    """
    if value is None:
        return NULL_TEXT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value) if exact else num(value)
    if isinstance(value, int):
        return str(value)
    return _sql_text(value)


def sql_json(value: Any) -> Any:
    """One value of a SQL result as JSON: numbers, booleans, null, arrays and objects stay
    themselves (a DECIMAL a number); INTERVAL, TIMESTAMP, BLOB and the like become the text
    `sql_cell` shows (NaN and infinities too: JSON has no number for them)."""
    from decimal import Decimal

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else sql_cell(value)
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value) if value.is_finite() else str(value)
    if _is_map(value):
        return {sql_cell(k, exact=True): sql_json(v) for k, v in value}
    if isinstance(value, list):
        return [sql_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): sql_json(v) for k, v in value.items()}
    return _sql_text(value)


def _is_map(value: Any) -> bool:
    """Arrow gives a MAP as a list of (key, value) tuples; no other type comes as tuples."""
    return isinstance(value, list) and bool(value) and all(
        type(v) is tuple and len(v) == 2 for v in value)


def _nested(value: Any) -> str:
    return sql_cell(value, exact=True)


def _sql_text(value: Any) -> str:
    import datetime as dt
    from decimal import Decimal

    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):  # pyarrow MonthDayNano
        return interval_text(int(value.months), int(value.days), int(value.nanoseconds))
    if isinstance(value, dt.timedelta):
        micros = (value.days * 86400 + value.seconds) * 10**6 + value.microseconds
        return interval_text(0, 0, micros * 1000)
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S") + _fraction(value.microsecond)
        offset = value.utcoffset()
        if offset is not None:
            sign, secs = ("-", -offset) if offset < dt.timedelta(0) else ("+", offset)
            hours, rest = divmod(int(secs.total_seconds()), 3600)
            text += f"{sign}{hours:02d}" + (f":{rest // 60:02d}" if rest else "")
        return text
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S") + _fraction(value.microsecond)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}"
                       for b in bytes(value))
    if _is_map(value):
        return "{" + ", ".join(f"{_nested(k)}={_nested(v)}" for k, v in value) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_nested(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"'{k}': {_nested(v)}" for k, v in value.items()) + "}"
    return str(value)


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


def interval_text(months: int, days: int, nanoseconds: int) -> str:
    """An INTERVAL as DuckDB writes it: `1 year 2 months 3 days 04:05:06.5`, `01:30:00`,
    `-1 day -02:00:00`, `00:00:00` for none."""
    parts = []
    years, months = int(months / 12), months - int(months / 12) * 12  # toward zero, as DuckDB
    for n, unit in ((years, "year"), (months, "month"), (days, "day")):
        if n:
            parts.append(f"{n} {unit}{'' if abs(n) == 1 else 's'}")
    if nanoseconds or not parts:
        sign = "-" if nanoseconds < 0 else ""
        micros = abs(nanoseconds) // 1000
        secs, frac = divmod(micros, 10**6)
        hours, rest = divmod(secs, 3600)
        parts.append(f"{sign}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}{_fraction(frac)}")
    return " ".join(parts)
