"""What one run hands the store, and its shaping into rows: the runs row's values as DuckDB
binds them and an Arrow table for each data table.

Bulk rows (samples, steps, events) go in through Arrow, never row by row. Nothing here opens
the database (efficientllm_tui.store.db does, and is the only module that imports `duckdb`);
a malformed row raises BadInput before any transaction starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

from efficientllm_tui.errors import BadInput
from efficientllm_tui.store.schema import COLUMNS, RUN_COLUMNS, WEIGHTS
from profiling.sample import FIELD_NAMES, Sample
from runners.protocol import STATUSES

_UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),  # JSON text; cast to JSON inside DuckDB
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}


def arrow_schema(table: str) -> pa.Schema:
    """Arrow schema of a table's columns after run_id (what ingest builds and reads return)."""
    return pa.schema([(n, _ARROW_TYPES[t]) for n, t in COLUMNS[table].items() if n != "run_id"])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunBundle:
    """Everything one run leaves behind, ingested in one transaction."""

    run: Mapping[str, Any]
    """Columns of the `runs` row (see RUN_COLUMNS); missing keys are NULL. Timestamps may be
    datetimes (naive means UTC), ISO strings or int nanoseconds since the epoch."""
    samples: pa.Table | Sequence[Sample] = ()
    """Device samples of the run's window: Sample records or an Arrow table whose columns
    are a subset of profiling.sample.FIELD_NAMES."""
    steps: Sequence[Mapping[str, Any]] = ()
    """Step rows: step, phase, t_ns, latency_s, tokens, samples, loss, lr, ttft_s; any other
    key goes into the `extra` JSON column."""
    windows: Sequence[Mapping[str, Any]] = ()
    """Measurement windows: name, device, t0_ns, t1_ns, energy_j, energy_source."""
    events: Sequence[Mapping[str, Any]] = ()
    """Every raw event line, in file order: {t_ns, kind, payload} or the flat event dict."""
    metrics: Sequence[Mapping[str, Any]] = ()
    """Long-form metrics: {name, value, unit, source}; names are unique within a run."""


def first_line(e: BaseException) -> str:
    """The first line of an error's message (plus DuckDB's "Did you mean" hint), for one-line
    errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    out = lines[0]
    # DuckDB's hint line is worth keeping; the "LINE 1: ... ^^^" caret art is not.
    if len(lines) > 1 and lines[1].startswith(("Did you mean", "Candidate")):
        out += " " + lines[1]
    return out


# --------------------------------------------------------------------------- value helpers


def _json_text(value: Any) -> str | None:
    """JSON text for a JSON column, from a Python value or from text that already is JSON.

    A string that parses as JSON is kept as it is (callers may serialise themselves); any
    other string is stored as a JSON string. Non-finite floats become null (JSON has no NaN).
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
            return value
        except ValueError:
            pass
    try:
        return json.dumps(value, allow_nan=False, default=str, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(value), default=str, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    """The Python value of a JSON column value given as text or as a value."""
    text = _json_text(value)
    return None if text is None else json.loads(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _timestamp(name: str, value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=_UTC)
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime(1970, 1, 1, tzinfo=_UTC) + timedelta(microseconds=value // 1000)
    if isinstance(value, str):
        try:
            return _timestamp(name, datetime.fromisoformat(value))
        except ValueError:
            pass
    raise BadInput(f"run column {name!r}: expected a datetime, ISO string or int ns, got {value!r}")


def run_values(run: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a runs row and convert its values to what DuckDB binds."""
    if not isinstance(run, Mapping):
        raise BadInput("a run row must be a mapping of column names to values")
    unknown = sorted(set(run) - set(RUN_COLUMNS))
    if unknown:
        raise BadInput(f"unknown run column(s): {', '.join(unknown)}")
    run_id = run.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise BadInput("a run row needs a non-empty run_id")
    status = run.get("status")
    if status is not None and status not in STATUSES:
        raise BadInput(f"unknown status {status!r} (choose from {', '.join(STATUSES)})")
    if run.get("weights") not in (None, *WEIGHTS):
        raise BadInput(f"weights must be 'random', 'real' or None, got {run['weights']!r}")
    out: dict[str, Any] = {}
    for name, value in run.items():
        typ = RUN_COLUMNS[name]
        if typ == "JSON":
            value = _json_text(value)
        elif typ == "TIMESTAMPTZ":
            value = _timestamp(name, value)
        out[name] = value
    return out


def _mapping(item: Any, what: str) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    to_dict = getattr(item, "to_dict", None)  # protocol records (Metric, Event)
    if callable(to_dict):
        return to_dict()
    raise BadInput(f"each {what} must be a mapping, got {type(item).__name__}")


def _arrow_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str) -> pa.Table:
    """Build an Arrow table column by column from dict rows; missing keys are null."""
    arrays = []
    for fld in schema:
        try:
            arrays.append(pa.array([r.get(fld.name) for r in rows], type=fld.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise BadInput(f"{what}: bad value in column {fld.name!r}: {first_line(e)}") from e
    return pa.Table.from_arrays(arrays, schema=schema)


def _samples_table(samples: pa.Table | Sequence[Sample]) -> pa.Table:
    schema = arrow_schema("samples")
    if isinstance(samples, pa.Table):
        extra = sorted(set(samples.column_names) - set(FIELD_NAMES) - {"run_id"})
        if extra:
            raise BadInput(f"samples: unknown column(s): {', '.join(extra)}")
        cols = [n for n in FIELD_NAMES if n in samples.column_names]
        try:
            return samples.select(cols).cast(pa.schema([schema.field(n) for n in cols]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise BadInput(f"samples: {first_line(e)}") from e
    arrays = []
    for fld in schema:
        try:
            arrays.append(pa.array([getattr(s, fld.name) for s in samples], type=fld.type))
        except AttributeError as e:
            raise BadInput("samples must be an Arrow table or a list of Sample records") from e
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise BadInput(f"samples: bad value in column {fld.name!r}: {first_line(e)}") from e
    return pa.Table.from_arrays(arrays, schema=schema)


def _steps_table(steps: Sequence[Any]) -> pa.Table:
    known = set(COLUMNS["steps"])
    rows = []
    for item in steps:
        d = _mapping(item, "step")
        # Fields a runner adds to a step event beyond the columns land in `extra`.
        extra = _json_value(d.get("extra")) or {}
        if not isinstance(extra, dict):
            raise BadInput(f"steps: extra must be a JSON object, got {d.get('extra')!r}")
        extra.update({k: v for k, v in d.items() if k not in known and k != "kind"})
        rows.append({**d, "extra": _json_text(extra or None)})
    return _arrow_rows(rows, arrow_schema("steps"), "steps")


def _events_table(events: Sequence[Any]) -> pa.Table:
    rows = []
    for seq, item in enumerate(events):
        d = _mapping(item, "event")
        payload = (
            d["payload"]
            if "payload" in d
            else {k: v for k, v in d.items() if k not in ("t_ns", "kind", "run_id")}
        )
        rows.append(
            {
                "seq": seq,
                "t_ns": d.get("t_ns"),
                "kind": d.get("kind"),
                "payload": _json_text(payload),
            }
        )
    return _arrow_rows(rows, arrow_schema("events"), "events")


def _metrics_table(metrics: Sequence[Any]) -> pa.Table:
    rows = [_mapping(m, "metric") for m in metrics]
    raw = [r.get("name") for r in rows]
    names = [n for n in raw if isinstance(n, str) and n]
    if len(names) != len(raw):
        raise BadInput("every metric needs a non-empty name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"duplicate metric name(s): {', '.join(dupes)}")
    return _arrow_rows(rows, arrow_schema("metrics"), "metrics")


def bundle_rows(bundle: RunBundle) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """A bundle as it is ingested: the runs row's values (`ingested_at` now unless the bundle
    gives it) and an Arrow table for each data table but `runs`.

    Raises:
        BadInput: A malformed row (unknown column, bad value, duplicate metric name).
    """
    if not isinstance(bundle.run, Mapping):
        raise BadInput("RunBundle.run must be a mapping of runs columns to values")
    values = run_values({"ingested_at": datetime.now(_UTC), **bundle.run})
    tables = {
        "samples": _samples_table(bundle.samples),
        "steps": _steps_table(bundle.steps),
        "windows": _arrow_rows(
            [_mapping(w, "window") for w in bundle.windows], arrow_schema("windows"), "windows"
        ),
        "events": _events_table(bundle.events),
        "metrics": _metrics_table(bundle.metrics),
    }
    return values, tables
