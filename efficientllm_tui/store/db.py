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
- User SQL in read-only mode runs in a sandbox (`connect(sandbox=True)`): a DuckDB of its own
  that attaches the file read-only with external access, extension installs and loads off,
  then locks its configuration, so the query can neither write nor read any other file nor
  SET those switches back.

The modules beside it hold what needs no `duckdb` import: the schema, views and migrations
(`schema`), a run's shaping into rows (`bundle`), the read methods with their SQL
(`reads`) and the words of the lock and corruption errors (`messages`).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb  # noqa: TID251 - the one module allowed to import it
import pyarrow as pa

from efficientllm_tui.errors import (
    BadInput,
    CorruptDatabase,
    DatabaseLocked,
    QueryError,
    StoreError,
)
from efficientllm_tui.store import merge, rescore
from efficientllm_tui.store.bundle import RunBundle, bundle_rows, first_line, run_values
from efficientllm_tui.store.messages import CORRUPT_MARKERS, locked_message
from efficientllm_tui.store.reads import (
    SANDBOX_CONFIG,
    StoreReads,
    arrow_table,
    query_io_failure,
    sandbox_refusal,
    sandbox_sql,
)
from efficientllm_tui.store.schema import (
    COLUMNS,
    DATA_TABLES,
    EXPORT_FORMATS,
    EXPORT_ORDER,
    SCHEMA_VERSION,
    migrate,
    schema_version,
    too_new,
)

_BACKOFF_START_S = 0.02
_BACKOFF_CAP_S = 1.0

# --------------------------------------------------------------------------- errors


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
    line = first_line(e)
    where = path if path is not None else "file"
    if any(m in msg for m in ("Conflicting lock", "Could not set lock", "different configuration",
                               "Unique file handle conflict")):
        return DatabaseLocked(locked_message(where, msg), "Database locked")
    if any(marker in msg for marker in CORRUPT_MARKERS):
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
    if sandboxed := sandbox_refusal(msg):
        return QueryError(f"read-only: {sandboxed}", "Read-only")
    if isinstance(e, _QUERY_ERRORS):
        return QueryError(line, "Query error")
    if outside := query_io_failure(msg):
        return QueryError(outside, "Query error")
    if isinstance(e, duckdb.IOException) or "Permission denied" in msg:
        return StoreError(f"cannot use database {where}: {line}", "Database error")
    return StoreError(line, "Database error")


# --------------------------------------------------------------------------- the store


class Store(StoreReads):
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

    def _connect_once(self, read_only: bool, sandbox: bool) -> Any:
        """One open of the file, in UTC; a sandbox is attached read-only and locked down."""
        if sandbox:
            # A DuckDB of its own (never the process's cached instance of the file), so the
            # locked settings reach no other connection; DuckDB still refuses it while this
            # process has the file open for writing ("Unique file handle conflict").
            con = duckdb.connect(":memory:", config=SANDBOX_CONFIG)
        else:
            con = duckdb.connect(str(self.path), read_only=read_only)
        try:
            for statement in sandbox_sql(self.path) if sandbox else ("SET TimeZone = 'UTC'",):
                con.execute(statement)
        except BaseException:
            con.close()
            raise
        return con

    def _open(self, read_only: bool, sandbox: bool = False) -> Any:
        """Open the file, retrying with jittered exponential backoff while it is locked."""
        read_only = read_only or sandbox
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
                return self._connect_once(read_only, sandbox)
            except duckdb.Error as e:
                err = _translate(e, self.path)
                waited = time.monotonic() - start
                left = self.lock_timeout_s - waited
                if not isinstance(err, DatabaseLocked):
                    raise err from e
                if left <= 0:
                    raise DatabaseLocked(
                        locked_message(self.path, str(e), waited), "Database locked"
                    ) from e
                # Full jitter around the current step so waiting processes spread out.
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, _BACKOFF_CAP_S)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, *, sandbox: bool = False) -> Iterator[Any]:
        """Open a short-lived connection with the schema checked (and migrated on write).

        DuckDB errors raised inside the block are translated to StoreError subclasses, and
        the connection is always closed (an uncommitted transaction rolls back). The session
        time zone is UTC.

        Args:
            read_only: Open the file read-only (it must exist). A database with an older
                schema is migrated first through a brief write open.
            sandbox: For user SQL: read-only, and nothing outside the database file can be
                read or written (COPY, EXPORT, ATTACH, INSTALL/LOAD, read_csv, secrets), nor
                any setting changed; such statements fail with a "read-only:" QueryError.

        Yields:
            A duckdb connection.

        Raises:
            DatabaseLocked: Another process held the file past `lock_timeout_s`.
            CorruptDatabase: The file is not a readable DuckDB database.
            StoreError: The file is missing (read-only), has a newer schema, or cannot be used.
        """
        read_only = read_only or sandbox
        con = self._open(read_only, sandbox)
        try:
            try:
                if read_only:
                    version = schema_version(con)
                    if version > SCHEMA_VERSION:
                        raise too_new(self.path, version)
                    if version < SCHEMA_VERSION:
                        con.close()
                        with self.connect(read_only=False):
                            pass  # migrates
                        con = self._open(True, sandbox)
                else:
                    migrate(con, self.path)
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
        values, tables = bundle_rows(bundle)
        run_id = values["run_id"]
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

    def attach_scores(self, run_id: str, metrics: Sequence[Mapping[str, Any]],
                      windows: Sequence[Mapping[str, Any]], event: Mapping[str, Any],
                      info: Mapping[str, Any]) -> None:
        """Add a later re-score (`efficientllm eval`) to stored run `run_id` in one
        transaction (store.rescore.attach says what changes).

        Raises:
            BadInput: No run `run_id` is stored, or a malformed metric row.
            StoreError: The database could not be written.
        """
        with self._transaction() as con:
            rescore.attach(con, run_id, metrics, windows, event, info)

    def upsert_run(self, run: Mapping[str, Any]) -> None:
        """Insert the runs row, or update only the given columns of an existing one.

        Used at launch (status `queued`/`running`) before any data exists; other tables are
        not touched.

        Args:
            run: Columns of the runs row; `run_id` is required.
        """
        values = run_values(run)
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
        run_values({"run_id": run_id, "status": status})
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

    def import_files(self, paths: Sequence[Path | str], *, replace: bool = False
                     ) -> merge.ImportReport:
        """Merge runs from `efficientllm export` files or other efficientllm databases in one
        transaction (store.merge; a stored run is skipped unless `replace`). A database file
        is only read; one of an older schema is migrated on a copy in a temporary folder.

        Raises:
            BadInput: A file that cannot be imported as it is (nothing is written then).
            StoreError: This database could not be written (locked, corrupt, ...).
        """
        sources = [merge.identify(Path(p).expanduser(), self.path) for p in paths]
        with tempfile.TemporaryDirectory(prefix="efficientllm-import-") as tmp:

            def migrate_copy(copy: Path) -> None:
                with Store(copy, lock_timeout_s=self.lock_timeout_s).connect():
                    pass  # a write open migrates

            with self._transaction() as con:
                return merge.merge(con, sources, replace=replace, scratch=Path(tmp),
                                   migrate_copy=migrate_copy)

    # ------------------------------------------------------------------ export

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
                    arrow_table(
                        con, "SELECT run_id FROM runs WHERE list_contains(?, run_id)", [ids]
                    )
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
