"""The read side of the store: the `Store` methods that read (`StoreReads`), the SQL of a page
of runs, and helpers that turn what an open connection returns into Arrow tables and dicts.

Nothing here imports `duckdb` or opens the file: efficientllm_tui.store.db does both, and
translates every DuckDB error raised inside its `connect` block. Rows come out through Arrow:
DuckDB converts TIMESTAMPTZ to Python only with `pytz` installed, while Arrow uses the standard
library's zoneinfo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from efficientllm_tui.errors import BadInput, QueryError
from efficientllm_tui.store.bundle import arrow_schema
from efficientllm_tui.store.schema import (
    COLUMNS,
    DATA_TABLES,
    LIST_METRIC_COLUMNS,
    RUN_COLUMNS,
    leaderboard_sql,
    schema_version,
    workload_sql,
)


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


# --------------------------------------------------------------------------- the SQL sandbox

# The sandbox of read-only user SQL (`Store.connect(sandbox=True)`), a DuckDB of its own. Set
# when it starts: no extension is installed or loaded behind the query's back.
SANDBOX_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def sandbox_sql(path: Path) -> tuple[str, ...]:
    """The statements that attach `path` read-only to a fresh sandbox DuckDB and lock it down.

    In this order: attach and use the file under its stem (as `duckdb.connect` names it),
    spill to where a direct open would, UTC; then no file outside the database is read or
    written (COPY, EXPORT, ATTACH of a file, INSTALL, read_csv & co, secrets kept on disk),
    and last the lock, which refuses every later SET, RESET or settings PRAGMA.
    """
    stem = "db" if path.stem.lower() in ("memory", "system", "temp", "main") else path.stem
    name = '"' + stem.replace('"', '""') + '"'
    return (
        f"ATTACH {_sql_text(str(path))} AS {name} (READ_ONLY)",
        f"USE {name}",
        f"SET temp_directory = {_sql_text(str(path) + '.tmp')}",
        "SET TimeZone = 'UTC'",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    )


EXTENSIONS_REFUSED = ("extensions are disabled in read-only queries (INSTALL and LOAD, and "
                      "the functions that would load one)")


def sandbox_refusal(msg: str) -> str | None:
    """What the sandbox refused (from DuckDB's error text), in words; None for other errors."""
    if re.search(r'Cannot access directory "[^"]*[/\\]extensions[/\\][^"]*" - file system', msg):
        return EXTENSIONS_REFUSED  # INSTALL: the sandbox keeps DuckDB's extension dir away
    if m := re.search(r'Cannot access (file|directory) "([^"]*)" - file system operations are '
                      r"disabled by configuration", msg):
        return (f"cannot use {m.group(1)} {m.group(2)}: no file outside the database is read "
                "or written in read-only mode")
    if "Loading external extensions is disabled" in msg:
        return EXTENSIONS_REFUSED
    if m := re.search(r'option "+([^"]+)"+ - the configuration has been locked', msg):
        return f"setting {m.group(1)} cannot be changed in read-only mode"
    return None


def query_io_failure(msg: str) -> str | None:
    """An IO error that the query met outside the database (an extension that could not be
    downloaded or found, a file it reads that is missing), in words; None for other IO
    errors, which are the database's own."""
    if m := re.search(r'Failed to download extension "+([^"]+)"+', msg):
        return (f"extension {m.group(1)} is not installed and could not be downloaded "
                "(no network, or no build for this DuckDB version); the database is fine")
    if m := re.search(r'Extension "+[^"]*?([^"/\\]+?)(\.duckdb_extension)?"+ not found', msg):
        return (f"extension {m.group(1)} is not installed (INSTALL {m.group(1)} needs the "
                "network); the database is fine")
    if m := re.search(r'No files found that match the pattern "+([^"]+)"+', msg):
        return f"no file matches {m.group(1)}"
    return None


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- helpers


def name_list(values: str | Sequence[str] | None) -> list[str] | None:
    """A filter argument (one name, several or None) as a list of names or None."""
    if values is None:
        return None
    return [values] if isinstance(values, str) else [str(v) for v in values]


def parse_json_fields(row: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Parse the JSON text of these columns of a row, in place."""
    for name in names:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


def arrow_table(con: Any, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """The whole result of a query as an Arrow table."""
    return con.sql(sql, params=params).to_arrow_table()


def dict_rows(con: Any, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The whole result of a query as dicts (through Arrow)."""
    return arrow_table(con, sql, params).to_pylist()


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table with `run_id` and the columns of `schema`."""
    return pa.Table.from_pylist([], schema=pa.schema([("run_id", pa.string()), *schema]))


def list_runs_sql(
    exact: Mapping[str, list[str] | None],
    words: Sequence[str],
    since: date | None,
    on: date | None,
    *,
    order_by: str,
    descending: bool,
    limit: int,
    offset: int,
) -> tuple[str, list[Any]]:
    """The query of `Store.list_runs` and its parameters (arguments already checked).

    Args:
        exact: runs column -> values it must be one of (None: any value).
        words: Each must appear (case-insensitive) in the run id, model, technique, host or
            error text.
        since: Keep runs started on or after this day (UTC).
        on: Keep runs started on this day (UTC).
        order_by: A runs column or a LIST_METRIC_COLUMNS metric; NULLs sort last.
        descending: Sort direction; ties are broken by run_id in the same direction.
        limit: Page size.
        offset: Rows to skip.
    """
    where: list[str] = []
    params: list[Any] = []
    for col, names in exact.items():
        if names is not None:
            where.append(f"list_contains(?, r.{col})")
            params.append(names)
    for word in words:
        where.append(
            "contains(lower(concat_ws(' ', r.run_id, r.model, r.technique, "
            "coalesce(r.host, ''), coalesce(r.error_text, ''))), ?)"
        )
        params.append(word.lower())
    if since is not None:
        where.append("r.started_at >= CAST(? AS DATE)")
        params.append(since.isoformat())
    if on is not None:
        where.append("CAST(r.started_at AS DATE) = CAST(? AS DATE)")
        params.append(on.isoformat())
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
    return sql, params


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


# --------------------------------------------------------------------------- the reads


class StoreReads:
    """The read methods of `efficientllm_tui.store.db.Store`, which opens the connections.

    Each method opens the file for one read through `Store.connect`; all but `query` read a
    missing database as empty.
    """

    path: Path

    def connect(self, read_only: bool = False, *, sandbox: bool = False
                ) -> AbstractContextManager[Any]:
        """A short-lived connection; `Store.connect` (the only one that opens the file)."""
        raise NotImplementedError

    def list_runs(
        self,
        *,
        family: str | Sequence[str] | None = None,
        model: str | Sequence[str] | None = None,
        technique: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        words: Sequence[str] = (),
        since: date | None = None,
        on: date | None = None,
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
            words: Keep runs whose run id, model, technique or error text contains each of
                these (case-insensitive).
            since: Keep runs started on or after this day (UTC).
            on: Keep runs started on this day (UTC).
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
        exact = {"family": family, "model": model, "technique": technique, "status": status}
        sql, params = list_runs_sql(
            {col: name_list(val) for col, val in exact.items()},
            words,
            since,
            on,
            order_by=order_by,
            descending=descending,
            limit=limit,
            offset=offset,
        )
        with self.connect(read_only=True) as con:
            rows = dict_rows(con, sql, params)
        return [parse_json_fields(r, ("params", "info")) for r in rows]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The runs row of one run plus `metrics`: {name: (value, unit, source)},
        `metric_notes`: {name: why the value is NULL or limited} (only names with a note),
        and `workload` (its ranking key); None for an unknown id."""
        if not self.path.exists():
            return None
        with self.connect(read_only=True) as con:
            rows = dict_rows(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
            if not rows:
                return None
            metrics = dict_rows(
                con,
                "SELECT name, value, unit, source, note FROM metrics WHERE run_id = ? "
                "ORDER BY name",
                [run_id],
            )
            workload = dict_rows(
                con, f"SELECT {workload_sql()} AS workload FROM runs r WHERE run_id = ?", [run_id]
            )
        row = parse_json_fields(rows[0], ("params", "info"))
        row["metrics"] = {m["name"]: (m["value"], m["unit"], m["source"]) for m in metrics}
        row["metric_notes"] = {m["name"]: m["note"] for m in metrics if m["note"]}
        row["workload"] = workload[0]["workload"]
        return row

    def metric_sources(self, run_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """{run_id: {metric name: source}} of these runs (`simulated`, `nvml`, `runner`, ...);
        a run without metrics is left out."""
        ids = sorted({str(i) for i in run_ids})
        if not ids or not self.path.exists():
            return {}
        with self.connect(read_only=True) as con:
            rows = dict_rows(
                con,
                "SELECT run_id, name, source FROM metrics WHERE list_contains(?, run_id) "
                "ORDER BY run_id, name",
                [ids],
            )
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r["run_id"], {})[r["name"]] = r["source"]
        return out

    def samples(self, run_id: str, device: str | None = None) -> pa.Table:
        """The run's samples (optionally of one device), ordered by device and time."""
        if not self.path.exists():
            return empty_table(arrow_schema("samples"))
        cols = ", ".join(COLUMNS["samples"])
        sql = f"SELECT {cols} FROM samples WHERE run_id = ?"
        params: list[Any] = [run_id]
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        with self.connect(read_only=True) as con:
            return arrow_table(con, sql + " ORDER BY device, t_ns", params)

    def steps(self, run_id: str) -> pa.Table:
        """The run's step rows ordered by time; `extra` is JSON text."""
        if not self.path.exists():
            return empty_table(arrow_schema("steps"))
        cols = ", ".join(COLUMNS["steps"])
        with self.connect(read_only=True) as con:
            return arrow_table(
                con, f"SELECT {cols} FROM steps WHERE run_id = ? ORDER BY t_ns, step", [run_id]
            )

    def windows(self, run_id: str) -> list[dict[str, Any]]:
        """The run's measurement windows ordered by start."""
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as con:
            return dict_rows(
                con,
                "SELECT * EXCLUDE (run_id) FROM windows WHERE run_id = ? ORDER BY t0_ns",
                [run_id],
            )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's raw events in file order: {t_ns, kind, payload (a dict)}."""
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as con:
            rows = dict_rows(
                con,
                "SELECT t_ns, kind, payload FROM events WHERE run_id = ? ORDER BY seq",
                [run_id],
            )
        return [parse_json_fields(r, ("payload",)) for r in rows]

    def run_ids(self) -> set[str]:
        """Every run id in the store."""
        return set(self.run_created())

    def run_created(self) -> dict[str, int]:
        """Every run id in the store with when it was created (ns since the epoch; 0 when
        unknown), for resolving `last` and unique prefixes."""
        if not self.path.exists():
            return {}
        sql = ("SELECT run_id, coalesce(epoch_ns(coalesce(created_at, started_at)), 0) "
               "FROM runs")
        with self.connect(read_only=True) as con:
            table = arrow_table(con, sql)
        return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))

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
            out["schema_version"] = schema_version(con)
        out["file_bytes"] = self.path.stat().st_size
        wal = self.path.with_name(self.path.name + ".wal")
        out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
        return out

    def leaderboard(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Leaderboard rows (see the `leaderboard` view), best first within each group.

        Args:
            run_ids: Rank only these runs against each other (min-max taken over them);
                None reads the view over every `ok` run.
        """
        if not self.path.exists():
            return []
        order = " ORDER BY family, group_name, model, workload, metric, rank, run_id"
        with self.connect(read_only=True) as con:
            if run_ids is None:
                return dict_rows(con, "SELECT * FROM leaderboard" + order)
            ids = sorted({str(i) for i in run_ids})
            sql = f"SELECT * FROM ({leaderboard_sql(selected=True)})" + order
            return dict_rows(con, sql, [ids])

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
            read_only: Run it in the read-only sandbox (`Store.connect(sandbox=True)`): writes,
                files outside the database, extensions and SET fail with a "read-only:"
                QueryError.
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
        with self.connect(read_only=read_only, sandbox=read_only) as con:
            table, columns, types, truncated = fetch_arrow(con, sql, params=params, limit=limit)
        rows: list[tuple[Any, ...]] = []
        if table is not None:
            rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
        return QueryResult(columns, types, rows, truncated)
