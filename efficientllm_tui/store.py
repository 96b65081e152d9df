"""The DuckDB store: every finished run, its time series and its metrics, in one local file.

Why it looks like this: DuckDB lets only one process open a database file while anyone
may write it; a second process gets "Conflicting lock is held", even when it only wants to
read. So nothing in efficientllm holds the file open. Every open is a short transaction
(open, do one thing, close), retried with jittered exponential backoff while the file is
locked, and live data never goes through DuckDB (runners write their run dir, the daemon
its spool). A user can therefore open the file in the duckdb CLI or any other client
whenever no ingest is running, and an ingest that meets their lock simply waits.

Other rules this module keeps:

- It is the only module that imports `duckdb`, and every DuckDB exception is translated in
  one place (`_translate`) into the app's `StoreError` family, one line each.
- A file that is not a DuckDB database (or is damaged) raises `CorruptDatabase` and is never
  deleted, truncated or overwritten.
- The schema is versioned (`schema_meta`); migrations run in one transaction on a write
  open. A file written by a newer efficientllm is refused rather than guessed at.
- Bulk rows (samples, steps, events) go in through Arrow, never row by row.
- Rows come out through Arrow too: DuckDB converts TIMESTAMPTZ to Python only with `pytz`
  installed, while Arrow uses the standard library's zoneinfo. Sessions run in UTC.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from efficientllm_tui.errors import (
    BadInput,
    CorruptDatabase,
    DatabaseLocked,
    QueryError,
    StoreError,
)
from profiling.sample import FIELD_NAMES, Sample
from runners.protocol import STATUSES

# --------------------------------------------------------------------------- constants

METRIC_DIRECTIONS: dict[str, bool] = {
    "amu": False,
    "pcu": True,
    "al_s": False,
    "tt": True,
    "st": True,
    "it": True,
    "aec_w": False,
    "mcr": True,
    "eval_ppl": False,
    "loss": False,
}
"""Leaderboard metrics and their direction: True when a higher value is better."""

RUN_METRIC_COLUMNS: tuple[str, ...] = tuple(
    """amu amu_gib peak_allocated_gib peak_reserved_gib pcu al_s al_p50_s al_p90_s al_p99_s
    tt st it ttft_s tpot_s aec_w energy_j energy_integral_j mcr tokens_per_s j_per_token mfu
    trainable_params total_params loss eval_ppl""".split()
)
"""Metric names pivoted into columns of the `run_metrics` view (DESIGN.md section 6)."""

LIST_METRIC_COLUMNS: tuple[str, ...] = tuple(
    "amu amu_gib pcu al_s tt st it ttft_s aec_w energy_j mcr eval_ppl loss".split()
)
"""The metric columns `list_runs` adds to each runs row (what a run table shows)."""

# Schema version 1, frozen: a later version adds columns in a new migration (ALTER TABLE)
# and updates COLUMNS, so the meaning of an old migration never changes.
_V1_TABLES: dict[str, str] = {
    "runs": """run_id VARCHAR PRIMARY KEY, family VARCHAR, technique VARCHAR, model VARCHAR,
        group_name VARCHAR, device VARCHAR, seed INTEGER, batch_size INTEGER, seq_len INTEGER,
        new_tokens INTEGER, steps INTEGER, warmup INTEGER, dataset VARCHAR, params JSON,
        simulated BOOLEAN, weights VARCHAR, status VARCHAR, error_type VARCHAR,
        error_text VARCHAR, created_at TIMESTAMPTZ, started_at TIMESTAMPTZ,
        ended_at TIMESTAMPTZ, host VARCHAR, pid INTEGER, contended BOOLEAN,
        torch_version VARCHAR, transformers_version VARCHAR, peft_version VARCHAR,
        quanto_version VARCHAR, driver_version VARCHAR, cuda_version VARCHAR, gpu_name VARCHAR,
        pcu_source VARCHAR, info JSON, ingested_at TIMESTAMPTZ""",
    # Exactly profiling.sample.FIELD_NAMES after run_id (a test holds them together).
    "samples": """run_id VARCHAR NOT NULL, t_ns BIGINT NOT NULL, host VARCHAR,
        device VARCHAR NOT NULL, source VARCHAR NOT NULL, mem_used_bytes BIGINT,
        mem_total_bytes BIGINT, util_pct DOUBLE, sm_active_pct DOUBLE, tensor_active_pct DOUBLE,
        dram_active_pct DOUBLE, power_w DOUBLE, sm_clock_mhz DOUBLE, temp_c DOUBLE,
        cpu_pct DOUBLE, rss_bytes BIGINT""",
    "steps": """run_id VARCHAR NOT NULL, step INTEGER, phase VARCHAR, t_ns BIGINT,
        latency_s DOUBLE, tokens BIGINT, samples BIGINT, loss DOUBLE, lr DOUBLE, ttft_s DOUBLE,
        extra JSON""",
    "windows": """run_id VARCHAR NOT NULL, name VARCHAR, device VARCHAR, t0_ns BIGINT,
        t1_ns BIGINT, energy_j DOUBLE, energy_source VARCHAR""",
    # seq keeps file order for replay: t_ns alone ties when events come in one tick.
    "events": """run_id VARCHAR NOT NULL, seq INTEGER NOT NULL, t_ns BIGINT, kind VARCHAR,
        payload JSON""",
    "metrics": """run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, value DOUBLE, unit VARCHAR,
        source VARCHAR, PRIMARY KEY (run_id, name)""",
}


def _columns(spec: str) -> dict[str, str]:
    """Column name -> DuckDB type of a CREATE TABLE body; table constraints are skipped."""
    out = {}
    for part in re.split(r",(?![^()]*\))", spec):
        name, typ = part.split()[:2]
        if name.upper() not in ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN"):
            out[name] = typ
    return out


COLUMNS: dict[str, dict[str, str]] = {t: _columns(spec) for t, spec in _V1_TABLES.items()}
"""Every table's columns (name -> DuckDB type) in the current schema version."""

RUN_COLUMNS: dict[str, str] = COLUMNS["runs"]
"""Columns of `runs`, the keys a run row may have."""

WEIGHTS = ("random", "real")
"""Allowed values of `runs.weights` (NULL when unknown)."""

DATA_TABLES = ("samples", "steps", "windows", "events", "metrics")
"""Tables holding rows of a run besides `runs`; each has a `run_id` column."""

EXPORT_ORDER: dict[str, str] = {
    "run_metrics": "run_id",
    "runs": "run_id",
    "metrics": "run_id, name",
    "samples": "run_id, device, t_ns",
    "steps": "run_id, t_ns, step",
    "windows": "run_id, t0_ns",
    "events": "run_id, seq",
    "leaderboard": "family, group_name, model, metric, rank, run_id",
}
"""What `export` may write (table names never come from the user unchecked), and the order."""

EXPORT_FORMATS = ("json", "csv", "parquet")

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),  # JSON text; cast to JSON inside DuckDB
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}


def _arrow_schema(table: str) -> pa.Schema:
    """Arrow schema of a table's columns after run_id (what ingest builds and reads return)."""
    return pa.schema([(n, _ARROW_TYPES[t]) for n, t in COLUMNS[table].items() if n != "run_id"])


_UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)
_BACKOFF_START_S = 0.02
_BACKOFF_CAP_S = 1.0
_MIGRATION_LOCK = threading.Lock()  # two threads of one process share a DuckDB instance

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


@dataclass(frozen=True)
class QueryResult:
    """The result of one `Store.query` call."""

    columns: list[str]
    """Column names, in order."""
    types: list[str]
    """DuckDB type of each column, e.g. `VARCHAR`, `TIMESTAMP WITH TIME ZONE`."""
    rows: list[tuple[Any, ...]]
    """The rows (at most `limit` of them)."""
    truncated: bool = False
    """True when the query returned more rows than `limit`."""


# --------------------------------------------------------------------------- errors


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    out = lines[0]
    # DuckDB's hint line is worth keeping; the "LINE 1: ... ^^^" caret art is not.
    if len(lines) > 1 and lines[1].startswith(("Did you mean", "Candidate")):
        out += " " + lines[1]
    return out


def _locked_message(path: object, msg: str, waited_s: float | None = None) -> str:
    holder = "another process"
    if m := re.search(r"held in (.+?) \(PID (\d+)\)", msg):
        holder = f"another process (pid {m.group(2)}, {m.group(1)})"
    elif "different configuration" in msg:
        holder = "another connection of this process, opened read-only vs read-write"
    waited = f"; waited {waited_s:.1f} s" if waited_s is not None else ""
    return (
        f"database {path} is locked by {holder}{waited}; try again when it has finished "
        "(an ingest takes seconds; a duckdb shell holds it until closed)"
    )


_CORRUPT_MARKERS = (
    "not a valid DuckDB database",
    "Could not read enough bytes",
    "Corrupt database",
    "checksum",
    "replaying WAL",
    "WAL file",
    "database has been invalidated",
    "Failed to load metadata",
)
_QUERY_ERRORS = (
    duckdb.ParserException,
    duckdb.CatalogException,
    duckdb.BinderException,
    duckdb.ConversionException,
    duckdb.ConstraintException,
    duckdb.InvalidInputException,
    duckdb.ProgrammingError,
    duckdb.DataError,
    duckdb.IntegrityError,
    duckdb.NotSupportedError,
)


def _translate(e: BaseException, path: object = None) -> StoreError:
    """Turn any DuckDB exception into one of the app's errors, with a one-line message.

    Args:
        e: The exception DuckDB raised.
        path: The database file, for messages.

    Returns:
        The StoreError subclass to raise (`raise _translate(e, path) from e`).
    """
    msg = str(e)
    line = _first_line(e)
    where = path if path is not None else "file"
    if "Conflicting lock" in msg or "Could not set lock" in msg or "different configuration" in msg:
        return DatabaseLocked(_locked_message(where, msg), "Database locked")
    if any(marker in msg for marker in _CORRUPT_MARKERS):
        return CorruptDatabase(
            f"{where} is not a readable DuckDB database ({line}); it was left untouched: "
            "move it away or pass --db with another path",
            "Corrupt database",
        )
    if "version number" in msg or "storage version" in msg:
        return StoreError(
            f"{where} was written by a different DuckDB version ({line})", "Database error"
        )
    if "read-only mode" in msg:
        detail = line.split("Error: ", 1)[-1]
        return QueryError(f"read-only: {detail} (the database was opened read-only)", "Read-only")
    if isinstance(e, _QUERY_ERRORS):
        return QueryError(line, "Query error")
    if isinstance(e, duckdb.IOException) or "Permission denied" in msg:
        return StoreError(f"cannot use database {where}: {line}", "Database error")
    return StoreError(line, "Database error")


# --------------------------------------------------------------------------- schema


def _run_metrics_sql() -> str:
    """The run_metrics view: one row a run, the metrics pivoted by conditional aggregation."""
    pivot = ",\n  ".join(
        f"max(m.value) FILTER (WHERE m.name = '{n}') AS \"{n}\"" for n in RUN_METRIC_COLUMNS
    )
    keys = "r.run_id, r.family, r.technique, r.model, r.group_name, r.status, r.simulated"
    return f"""
SELECT {keys}, r.started_at,
  {pivot}
FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id
GROUP BY {keys}, r.started_at"""


def _leaderboard_sql(selected: bool = False) -> str:
    """The leaderboard query; `selected` adds a `?` parameter: a list of run ids to rank.

    Score is the paper's min-max normalisation to [0.1, 1] within (family, group_name, model,
    device, simulated, metric): runs on another device, or simulated ones, are never ranked
    against each other. Lower-is-better metrics flipped, 1.0 when every value is equal;
    rank 1 is best (ties share a rank). `simulated` is carried along so simulated rows can be
    labelled.
    """
    directions = ", ".join(f"('{k}', {str(v).lower()})" for k, v in METRIC_DIRECTIONS.items())
    only = "\n    AND list_contains(?, r.run_id)" if selected else ""
    return f"""
WITH dirs(metric, higher_is_better) AS (VALUES {directions}),
vals AS (
  SELECT r.run_id, r.family, r.group_name, r.model, r.device, r.technique,
         m.name AS metric, m.value, d.higher_is_better, coalesce(r.simulated, false) AS simulated
  FROM runs r JOIN metrics m ON m.run_id = r.run_id JOIN dirs d ON d.metric = m.name
  WHERE r.status = 'ok' AND m.value IS NOT NULL AND NOT isnan(m.value){only}
),
bounds AS (
  SELECT *, min(value) OVER w AS lo, max(value) OVER w AS hi
  FROM vals WINDOW w AS (PARTITION BY family, group_name, model, device, simulated, metric)
),
scored AS (
  SELECT *, CASE WHEN hi = lo THEN 1.0
                 WHEN higher_is_better THEN 0.1 + 0.9 * (value - lo) / (hi - lo)
                 ELSE 0.1 + 0.9 * (hi - value) / (hi - lo) END AS score
  FROM bounds
)
SELECT run_id, family, group_name, model, technique, metric, value, higher_is_better, score,
       rank() OVER (PARTITION BY family, group_name, model, device, simulated, metric
                    ORDER BY score DESC) AS rank,
       simulated
FROM scored"""


def _migrate_to_1(con: Any) -> None:
    """Version 1: the tables of DESIGN.md section 5."""
    for table, spec in _V1_TABLES.items():
        con.execute(f"CREATE TABLE {table} ({spec})")


MIGRATIONS: list[Callable[[Any], None]] = [_migrate_to_1]
"""MIGRATIONS[v] takes a database from schema version v to v + 1.

Views are derived, not migrated: they are recreated from the current code after every
migration, so a change to a view (or to METRIC_DIRECTIONS) ships as a new, possibly empty,
migration that bumps the version."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and understands."""


def _schema_version(con: Any) -> int:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'schema_meta'"
    ).fetchall()
    if not row[0][0]:
        return 0
    # fetchall, never fetchone: DuckDB 2 refuses new work while a result is unfinished.
    rows = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def _too_new(path: Path, version: int) -> StoreError:
    return StoreError(
        f"database {path} has schema version {version}, newer than this efficientllm "
        f"understands ({SCHEMA_VERSION}); upgrade efficientllm (pip install -U "
        "efficientllm-tui) or pass --db with another path",
        "Database too new",
    )


def _migrate(con: Any, path: Path) -> None:
    with _MIGRATION_LOCK:
        con.execute("BEGIN TRANSACTION")
        try:
            version = _schema_version(con)
            if version > SCHEMA_VERSION:
                raise _too_new(path, version)
            if version < SCHEMA_VERSION:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_meta "
                    "(key VARCHAR PRIMARY KEY, value VARCHAR)"
                )
                for migration in MIGRATIONS[version:]:
                    migration(con)
                con.execute("CREATE OR REPLACE VIEW run_metrics AS" + _run_metrics_sql())
                con.execute("CREATE OR REPLACE VIEW leaderboard AS" + _leaderboard_sql())
                con.execute(
                    "INSERT OR REPLACE INTO schema_meta VALUES "
                    "('schema_version', ?), ('migrated_at', ?)",
                    [str(SCHEMA_VERSION), datetime.now(_UTC).isoformat()],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


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


def _run_values(run: Mapping[str, Any]) -> dict[str, Any]:
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
            raise BadInput(f"{what}: bad value in column {fld.name!r}: {_first_line(e)}") from e
    return pa.Table.from_arrays(arrays, schema=schema)


def _samples_table(samples: pa.Table | Sequence[Sample]) -> pa.Table:
    schema = _arrow_schema("samples")
    if isinstance(samples, pa.Table):
        extra = sorted(set(samples.column_names) - set(FIELD_NAMES) - {"run_id"})
        if extra:
            raise BadInput(f"samples: unknown column(s): {', '.join(extra)}")
        cols = [n for n in FIELD_NAMES if n in samples.column_names]
        try:
            return samples.select(cols).cast(pa.schema([schema.field(n) for n in cols]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise BadInput(f"samples: {_first_line(e)}") from e
    arrays = []
    for fld in schema:
        try:
            arrays.append(pa.array([getattr(s, fld.name) for s in samples], type=fld.type))
        except AttributeError as e:
            raise BadInput("samples must be an Arrow table or a list of Sample records") from e
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise BadInput(f"samples: bad value in column {fld.name!r}: {_first_line(e)}") from e
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
    return _arrow_rows(rows, _arrow_schema("steps"), "steps")


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
    return _arrow_rows(rows, _arrow_schema("events"), "events")


def _metrics_table(metrics: Sequence[Any]) -> pa.Table:
    rows = [_mapping(m, "metric") for m in metrics]
    names = [r.get("name") for r in rows]
    if any(not isinstance(n, str) or not n for n in names):
        raise BadInput("every metric needs a non-empty name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"duplicate metric name(s): {', '.join(dupes)}")
    return _arrow_rows(rows, _arrow_schema("metrics"), "metrics")


def _names(values: str | Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else [str(v) for v in values]


def _parse_json_fields(row: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    for name in names:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


def _arrow(con: Any, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    return con.sql(sql, params=params).to_arrow_table()


def _dicts(con: Any, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    return _arrow(con, sql, params).to_pylist()


def _empty(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([], schema=pa.schema([("run_id", pa.string()), *schema]))


# --------------------------------------------------------------------------- the store


class Store:
    """Short-transaction access to one efficientllm DuckDB file.

    Holds no connection: each method opens the file, does its work and closes it, so other
    processes (a runner's ingest, a duckdb shell) can use the file in between.

    Args:
        path: The database file (created with its parent dir on the first write).
        lock_timeout_s: How long an open waits for another process's lock before it raises
            DatabaseLocked.
    """

    def __init__(self, path: Path | str, *, lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.lock_timeout_s = float(lock_timeout_s)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ connections

    def _open(self, read_only: bool) -> Any:
        """Open the file, retrying with jittered exponential backoff while it is locked."""
        if self.path.is_dir():
            raise StoreError(f"database path {self.path} is a directory", "Database error")
        if read_only and not self.path.exists():
            raise StoreError(f"no database at {self.path}; run something first", "No database")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        delay = _BACKOFF_START_S
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as e:
                err = _translate(e, self.path)
                waited = time.monotonic() - start
                left = self.lock_timeout_s - waited
                if not isinstance(err, DatabaseLocked):
                    raise err from e
                if left <= 0:
                    raise DatabaseLocked(
                        _locked_message(self.path, str(e), waited), "Database locked"
                    ) from e
                # Full jitter around the current step so waiting processes spread out.
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, _BACKOFF_CAP_S)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[Any]:
        """Open a short-lived connection with the schema checked (and migrated on write).

        DuckDB errors raised inside the block are translated to StoreError subclasses, and
        the connection is always closed (an uncommitted transaction rolls back). The session
        time zone is UTC.

        Args:
            read_only: Open the file read-only (it must exist). A database with an older
                schema is migrated first through a brief write open.

        Yields:
            A duckdb connection.

        Raises:
            DatabaseLocked: Another process held the file past `lock_timeout_s`.
            CorruptDatabase: The file is not a readable DuckDB database.
            StoreError: The file is missing (read-only), has a newer schema, or cannot be used.
        """
        con = self._open(read_only)
        try:
            try:
                con.execute("SET TimeZone = 'UTC'")
                if read_only:
                    version = _schema_version(con)
                    if version > SCHEMA_VERSION:
                        raise _too_new(self.path, version)
                    if version < SCHEMA_VERSION:
                        con.close()
                        with self.connect(read_only=False):
                            pass  # migrates
                        con = self._open(read_only=True)
                        con.execute("SET TimeZone = 'UTC'")
                else:
                    _migrate(con, self.path)
            except duckdb.Error as e:
                raise _translate(e, self.path) from e
            try:
                yield con
            except duckdb.Error as e:
                raise _translate(e, self.path) from e
        finally:
            con.close()

    def check(self) -> None:
        """Fail early if the file exists but cannot be used (corrupt, too new); wait on a lock.

        A missing file is fine: the first write creates it.
        """
        if self.path.exists():
            with self.connect(read_only=True):
                pass

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self.connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writes

    def ingest(self, bundle: RunBundle) -> None:
        """Store one run with all its rows in one transaction, replacing any earlier copy.

        Idempotent by run_id: the run's rows are deleted from every table, then inserted.
        `ingested_at` is set to now unless the bundle gives it.

        Args:
            bundle: The run and its rows.

        Raises:
            BadInput: A malformed row (unknown column, bad value, duplicate metric name).
            StoreError: The database could not be written (locked, corrupt, ...).
        """
        if not isinstance(bundle.run, Mapping):
            raise BadInput("RunBundle.run must be a mapping of runs columns to values")
        values = _run_values({"ingested_at": datetime.now(_UTC), **bundle.run})
        run_id = values["run_id"]
        tables = {
            "samples": _samples_table(bundle.samples),
            "steps": _steps_table(bundle.steps),
            "windows": _arrow_rows(
                [_mapping(w, "window") for w in bundle.windows], _arrow_schema("windows"), "windows"
            ),
            "events": _events_table(bundle.events),
            "metrics": _metrics_table(bundle.metrics),
        }
        with self._transaction() as con:
            for table in ("runs", *DATA_TABLES):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            cols = list(values)
            con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                list(values.values()),
            )
            for table, arrow in tables.items():
                if arrow.num_rows:
                    self._insert_arrow(con, table, run_id, arrow)

    @staticmethod
    def _insert_arrow(con: Any, table: str, run_id: str, arrow: pa.Table) -> None:
        """INSERT ... SELECT from a registered Arrow table (one vectorised statement)."""
        types = COLUMNS[table]
        cols = arrow.column_names  # validated against COLUMNS above
        select = ", ".join(f'"{c}"::JSON' if types[c] == "JSON" else f'"{c}"' for c in cols)
        name = f"_ingest_{table}"
        con.register(name, arrow)
        try:
            con.execute(
                f"INSERT INTO {table} (run_id, {', '.join(cols)}) SELECT ?, {select} FROM {name}",
                [run_id],
            )
        finally:
            con.unregister(name)

    def upsert_run(self, run: Mapping[str, Any]) -> None:
        """Insert the runs row, or update only the given columns of an existing one.

        Used at launch (status `queued`/`running`) before any data exists; other tables are
        not touched.

        Args:
            run: Columns of the runs row; `run_id` is required.
        """
        values = _run_values(run)
        cols = list(values)
        updates = [c for c in cols if c != "run_id"]
        conflict = (
            f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in updates)}"
            if updates
            else "DO NOTHING"
        )
        with self._transaction() as con:
            con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES "
                f"({', '.join('?' * len(cols))}) ON CONFLICT (run_id) {conflict}",
                list(values.values()),
            )

    def set_status(
        self, run_id: str, status: str, error_type: str | None = None, error_text: str | None = None
    ) -> None:
        """Set a run's status and error fields.

        Raises:
            BadInput: Unknown status or unknown run id.
        """
        _run_values({"run_id": run_id, "status": status})
        with self._transaction() as con:
            row = con.execute(
                "UPDATE runs SET status = ?, error_type = ?, error_text = ? "
                "WHERE run_id = ? RETURNING run_id",
                [status, error_type, error_text, run_id],
            ).fetchall()
            if not row:
                raise BadInput(f"unknown run id {run_id!r}")

    def delete_runs(self, ids: Iterable[str]) -> int:
        """Delete runs and all their rows in one transaction.

        Returns:
            How many runs rows were deleted (unknown ids are skipped).
        """
        wanted = sorted({str(i) for i in ids})
        if not wanted or not self.path.exists():
            return 0
        with self._transaction() as con:
            n = con.execute(
                "SELECT count(*) FROM runs WHERE list_contains(?, run_id)", [wanted]
            ).fetchall()[0][0]
            for table in ("runs", *DATA_TABLES):
                con.execute(f"DELETE FROM {table} WHERE list_contains(?, run_id)", [wanted])
        return int(n)

    # ------------------------------------------------------------------ reads

    def list_runs(
        self,
        *,
        family: str | Sequence[str] | None = None,
        model: str | Sequence[str] | None = None,
        technique: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int = 200,
        offset: int = 0,
        order_by: str = "started_at",
        descending: bool = True,
    ) -> list[dict[str, Any]]:
        """One page of runs rows, each with the LIST_METRIC_COLUMNS metrics added.

        Never scans samples: the page is cut from `runs` first and only its metrics are
        pivoted (unless ordering by a metric). A missing database reads as no runs.

        Args:
            family: Keep runs of this family (or any of these families).
            model: Keep runs of this model (or these).
            technique: Keep runs of this technique (or these).
            status: Keep runs with this status (or these).
            limit: Page size.
            offset: Rows to skip.
            order_by: A runs column or a LIST_METRIC_COLUMNS metric; NULLs sort last.
            descending: Sort direction; ties are broken by run_id in the same direction.

        Returns:
            Dicts of runs columns (`params`, `info` parsed from JSON) and metric columns.
        """
        if order_by not in RUN_COLUMNS and order_by not in LIST_METRIC_COLUMNS:
            raise BadInput(f"cannot order runs by {order_by!r}")
        if limit < 0 or offset < 0:
            raise BadInput("limit and offset must not be negative")
        if not self.path.exists():
            return []
        where, params = [], []
        for col, val in (
            ("family", family),
            ("model", model),
            ("technique", technique),
            ("status", status),
        ):
            names = _names(val)
            if names is not None:
                where.append(f"list_contains(?, r.{col})")
                params.append(names)
        cond = ("WHERE " + " AND ".join(where)) if where else ""
        direction = "DESC" if descending else "ASC"
        pivot = ", ".join(
            f"max(m.value) FILTER (WHERE m.name = '{n}') AS \"{n}\"" for n in LIST_METRIC_COLUMNS
        )
        metric_cols = ", ".join(f'p."{n}"' for n in LIST_METRIC_COLUMNS)
        if order_by in RUN_COLUMNS:
            order = f'"{order_by}" {direction} NULLS LAST, run_id {direction}'
            sql = f"""
WITH page AS (SELECT r.* FROM runs r {cond} ORDER BY {order} LIMIT ? OFFSET ?),
p AS (SELECT m.run_id, {pivot} FROM metrics m
      WHERE m.run_id IN (SELECT run_id FROM page) GROUP BY m.run_id)
SELECT page.*, {metric_cols} FROM page LEFT JOIN p ON p.run_id = page.run_id
ORDER BY {order}"""
        else:
            order = f'p."{order_by}" {direction} NULLS LAST, r.run_id {direction}'
            sql = f"""
WITH p AS (SELECT m.run_id, {pivot} FROM metrics m GROUP BY m.run_id)
SELECT r.*, {metric_cols} FROM runs r LEFT JOIN p ON p.run_id = r.run_id {cond}
ORDER BY {order} LIMIT ? OFFSET ?"""
        params += [int(limit), int(offset)]
        with self.connect(read_only=True) as con:
            rows = _dicts(con, sql, params)
        return [_parse_json_fields(r, ("params", "info")) for r in rows]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The runs row of one run plus `metrics`: {name: (value, unit, source)}, or None."""
        if not self.path.exists():
            return None
        with self.connect(read_only=True) as con:
            rows = _dicts(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
            if not rows:
                return None
            metrics = _dicts(
                con,
                "SELECT name, value, unit, source FROM metrics WHERE run_id = ? ORDER BY name",
                [run_id],
            )
        row = _parse_json_fields(rows[0], ("params", "info"))
        row["metrics"] = {m["name"]: (m["value"], m["unit"], m["source"]) for m in metrics}
        return row

    def samples(self, run_id: str, device: str | None = None) -> pa.Table:
        """The run's samples (optionally of one device), ordered by device and time."""
        if not self.path.exists():
            return _empty(_arrow_schema("samples"))
        cols = ", ".join(COLUMNS["samples"])
        sql = f"SELECT {cols} FROM samples WHERE run_id = ?"
        params: list[Any] = [run_id]
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        with self.connect(read_only=True) as con:
            return _arrow(con, sql + " ORDER BY device, t_ns", params)

    def steps(self, run_id: str) -> pa.Table:
        """The run's step rows ordered by time; `extra` is JSON text."""
        if not self.path.exists():
            return _empty(_arrow_schema("steps"))
        cols = ", ".join(COLUMNS["steps"])
        with self.connect(read_only=True) as con:
            return _arrow(
                con, f"SELECT {cols} FROM steps WHERE run_id = ? ORDER BY t_ns, step", [run_id]
            )

    def windows(self, run_id: str) -> list[dict[str, Any]]:
        """The run's measurement windows ordered by start."""
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as con:
            return _dicts(
                con,
                "SELECT * EXCLUDE (run_id) FROM windows WHERE run_id = ? ORDER BY t0_ns",
                [run_id],
            )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's raw events in file order: {t_ns, kind, payload (a dict)}."""
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as con:
            rows = _dicts(
                con,
                "SELECT t_ns, kind, payload FROM events WHERE run_id = ? ORDER BY seq",
                [run_id],
            )
        return [_parse_json_fields(r, ("payload",)) for r in rows]

    def run_ids(self) -> set[str]:
        """Every run id in the store."""
        if not self.path.exists():
            return set()
        with self.connect(read_only=True) as con:
            return set(_arrow(con, "SELECT run_id FROM runs").column(0).to_pylist())

    def leaderboard(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Leaderboard rows (see the `leaderboard` view), best first within each group.

        Args:
            run_ids: Rank only these runs against each other (min-max taken over them);
                None reads the view over every `ok` run.
        """
        if not self.path.exists():
            return []
        order = " ORDER BY family, group_name, model, metric, rank, run_id"
        with self.connect(read_only=True) as con:
            if run_ids is None:
                return _dicts(con, "SELECT * FROM leaderboard" + order)
            ids = sorted({str(i) for i in run_ids})
            return _dicts(con, f"SELECT * FROM ({_leaderboard_sql(selected=True)})" + order, [ids])

    def query(
        self,
        sql: str,
        *,
        read_only: bool = True,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> QueryResult:
        """Run user SQL; with several statements, all run and the last one's result returns.

        Args:
            sql: One or more SQL statements.
            read_only: Open the file read-only, so writes fail with a "read-only:" QueryError.
            params: Values for `?` / `$name` placeholders.
            limit: Keep at most this many rows (`truncated` says whether more existed).

        Raises:
            QueryError: The SQL failed (one line, no traceback text).
            StoreError: The database is missing (read-only), locked or unreadable.
        """
        if not sql or not sql.strip():
            raise QueryError("empty query", "Query error")
        if limit is not None and limit < 0:
            raise BadInput("limit must not be negative")
        with self.connect(read_only=read_only) as con:
            table, columns, types, truncated = fetch_arrow(con, sql, params=params, limit=limit)
        rows: list[tuple[Any, ...]] = []
        if table is not None:
            rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
        return QueryResult(columns, types, rows, truncated)

    # ------------------------------------------------------------------ export & stats

    def export(
        self,
        path: Path | str,
        fmt: str,
        run_ids: Sequence[str] | None = None,
        table: str = "run_metrics",
    ) -> int:
        """Write a table or view to a file with DuckDB's COPY.

        JSON is written as one JSON array of objects (one document, like `--json`); CSV has
        a header; Parquet keeps the column types. The file appears atomically (written to a
        temporary sibling, then renamed).

        Args:
            path: Output file; its parent dir is created.
            fmt: `json`, `csv` or `parquet`.
            run_ids: Only these runs; None exports every row.
            table: One of EXPORT_ORDER's keys.

        Returns:
            The number of rows written.

        Raises:
            BadInput: Unknown format, table or run ids (all unknown ids are listed).
        """
        if fmt not in EXPORT_FORMATS:
            raise BadInput(
                f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})"
            )
        if table not in EXPORT_ORDER:
            raise BadInput(f"cannot export {table!r} (choose from {', '.join(EXPORT_ORDER)})")
        out = Path(path).expanduser()
        if out.is_dir():
            raise BadInput(f"export path {out} is a directory")
        options = {
            "json": "FORMAT json, ARRAY true",
            "csv": "FORMAT csv, HEADER true",
            "parquet": "FORMAT parquet",
        }[fmt]
        ids = None if run_ids is None else list(dict.fromkeys(str(i) for i in run_ids))
        with self.connect(read_only=True) as con:
            params: list[Any] = []
            where = ""
            if ids is not None:
                known = set(
                    _arrow(con, "SELECT run_id FROM runs WHERE list_contains(?, run_id)", [ids])
                    .column(0)
                    .to_pylist()
                )
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise BadInput(f"unknown run id(s): {', '.join(unknown)}")
                where, params = " WHERE list_contains(?, run_id)", [ids]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                row = con.execute(
                    f"COPY (SELECT * FROM {table}{where} ORDER BY "
                    f"{EXPORT_ORDER[table]}) TO ? ({options})",
                    [*params, str(tmp)],
                ).fetchall()
                os.replace(tmp, out)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return int(row[0][0]) if row else 0

    def stats(self) -> dict[str, Any]:
        """Row counts per table, file size and schema version (zeros for a missing file)."""
        counts = dict.fromkeys(("runs", *DATA_TABLES), 0)
        out: dict[str, Any] = {
            "path": str(self.path),
            "exists": self.path.exists(),
            "file_bytes": 0,
            "wal_bytes": 0,
            "schema_version": None,
            "rows": counts,
        }
        if not out["exists"]:
            return out
        with self.connect(read_only=True) as con:
            union = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in counts)
            for name, n in con.execute(union).fetchall():
                counts[name] = int(n)
            out["schema_version"] = _schema_version(con)
        out["file_bytes"] = self.path.stat().st_size
        wal = self.path.with_name(self.path.name + ".wal")
        out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
        return out


def fetch_arrow(con: Any, sql: str, *, params: Any = None, limit: int | None = None
                ) -> tuple[pa.Table | None, list[str], list[str], bool]:
    """Run SQL on an open connection: (Arrow table of at most `limit` rows or None for a
    statement without rows, columns, types, truncated). Reads in batches, so a huge result
    stops at `limit + 1` rows."""
    rel = con.sql(sql, params=params)
    if rel is None:
        return None, [], [], False
    columns = list(rel.columns)
    types = [str(t) for t in rel.types]
    batches, n = [], 0
    for batch in rel.to_arrow_reader(2048):
        batches.append(batch)
        n += batch.num_rows
        if limit is not None and n > limit:
            break
    table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else None
    if table is not None and limit is not None:
        table = table.slice(0, limit)
    return table, columns, types, limit is not None and n > limit
