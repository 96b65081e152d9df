"""The SQL console's core: cancellable queries, persisted history, result export.

Why not `Store.query`: a long query must be stoppable, and DuckDB stops one only through
`connection.interrupt()`, which `Store.query` keeps to itself. So a console query opens its
own short connection through `Store.connect` (same lock retries, same error translation)
and keeps the handle so `cancel()` can interrupt it from the UI thread.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficientllm_tui.errors import BadInput, QueryError, StoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from efficientllm_tui.store.db import Store

HISTORY_FILE = "sql_history.json"
HISTORY_MAX = 500
EXPORT_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


class QueryCancelled(StoreError):
    """The user stopped the query."""


@dataclass(frozen=True)
class ConsoleResult:
    """Rows of one statement of a console query (at most `limit`), and how long it took."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_s: float
    """The whole query's time (every statement)."""
    statement: int = 1
    """Which statement of the query gave these rows, from 1."""
    statements: int = 1
    """How many statements the query ran."""
    sql: str = ""
    """The statement's own text."""


@dataclass(frozen=True)
class SchemaTable:
    """A table or view of the database, with its columns, for the console's schema tree."""

    name: str
    kind: str
    """`table` or `view`."""
    columns: tuple[tuple[str, str], ...]
    """(name, DuckDB type) in the table's order."""


_SCHEMA_SQL = """
SELECT t.table_name, t.table_type, c.column_name, c.data_type
FROM information_schema.tables t
JOIN information_schema.columns c
  ON c.table_catalog = t.table_catalog AND c.table_schema = t.table_schema
 AND c.table_name = t.table_name
WHERE t.table_catalog = current_database() AND t.table_schema = current_schema()
ORDER BY t.table_type, t.table_name, c.ordinal_position
"""


def schema_tables(store: Store) -> list[SchemaTable]:
    """The database's tables, then its views (run_metrics, leaderboard, ...), each with its
    columns and their types; read in the read-only sandbox like any console query."""
    result = ConsoleQuery(store, _SCHEMA_SQL).run(limit=None)
    tables: dict[str, SchemaTable] = {}
    for name, kind, column, type_ in result.rows:
        t = tables.setdefault(name, SchemaTable(name, "view" if kind == "VIEW" else "table", ()))
        tables[name] = SchemaTable(name, t.kind, (*t.columns, (column, type_)))
    return sorted(tables.values(), key=lambda t: (t.kind != "table", t.name))


def completions(text: str, tables: list[SchemaTable]) -> tuple[str, list[str]]:
    """What completes the name being typed at the end of `text`: (text to insert, every
    name that fits). `tab` or `ctrl+space` in the console inserts it.

    A word after `table.` is completed from that table's columns, any other from the table,
    view and column names. Case is matched without regard to case; the inserted text is the
    longest prefix all candidates share.
    """
    m = re.search(r"(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([A-Za-z_][A-Za-z0-9_]*)?$", text)
    word = (m.group(2) or "") if m else ""
    owner = m.group(1) if m else None
    if owner is not None:
        names = [c for t in tables if t.name.lower() == owner.lower() for c, _ in t.columns]
    elif not word:
        return "", []
    else:
        names = [t.name for t in tables] + [c for t in tables for c, _ in t.columns]
    low = word.lower()
    found = sorted({n for n in names if n.lower().startswith(low) and n.lower() != low})
    if not found:
        return "", []
    common = os.path.commonprefix([n.lower() for n in found])
    return found[0][len(word):len(common)], found


class ConsoleQuery:
    """One query run on a worker thread; `cancel()` may be called from any thread.

    With `read_only` (the default) it runs in the store's read-only sandbox: no write, no file
    outside the database read or written, no extension, no SET (a "read-only:" QueryError).
    """

    def __init__(self, store: Store, sql: str, *, read_only: bool = True) -> None:
        self.store = store
        self.sql = sql
        self.read_only = read_only
        self._con: Any = None
        self._lock = threading.Lock()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            con = self._con
        if con is not None:
            try:
                con.interrupt()
            except Exception:  # noqa: BLE001 - closing races with the end of the query
                pass

    def arrow(self, limit: int | None = None) -> tuple[pa.Table | None, list[str], list[str], bool]:
        """Run it: (Arrow table of at most `limit` rows or None, columns, types, truncated)
        of its last statement, as `Store.query` returns."""
        return self.arrows(limit)[-1][1:]

    def arrows(self, limit: int | None = None
               ) -> list[tuple[str, pa.Table | None, list[str], list[str], bool]]:
        """Run every statement in turn on one connection: for each, (its text, Arrow table of
        at most `limit` rows or None for a statement without rows, columns, types,
        truncated)."""
        from efficientllm_tui.store.reads import fetch_arrow

        if not self.sql.strip():
            raise QueryError("empty query", "Query error")
        try:
            with self.store.connect(read_only=self.read_only, sandbox=self.read_only) as con:
                with self._lock:
                    if self.cancelled:
                        raise QueryCancelled("query cancelled", "Cancelled")
                    self._con = con
                try:
                    texts = [st.query.strip() for st in con.extract_statements(self.sql)]
                    return [(text, *fetch_arrow(con, text, limit=limit))
                            for text in texts or [self.sql]]
                finally:
                    with self._lock:
                        self._con = None
        except StoreError as e:
            if self.cancelled:
                raise QueryCancelled("query cancelled", "Cancelled") from e
            raise

    def run(self, limit: int | None = 1000) -> ConsoleResult:
        """The last statement's rows (all statements run)."""
        return self.run_all(limit)[-1]

    def run_all(self, limit: int | None = 1000) -> list[ConsoleResult]:
        """Each statement's rows, in order: every statement that returns rows, or the last
        statement's (empty) result when none does."""
        t0 = time.perf_counter()
        done = self.arrows(limit)
        elapsed = time.perf_counter() - t0
        out = []
        for i, (text, table, columns, types, truncated) in enumerate(done, 1):
            if table is None and columns == [] and i < len(done):
                continue  # a statement without rows (CREATE, SET, ...): nothing to show
            rows: list[tuple[Any, ...]] = []
            if table is not None:
                rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
            out.append(ConsoleResult(columns, types, rows, truncated, elapsed, i, len(done),
                                     text))
        return out


def export_query(
    store: Store, sql: str, path: Path, *, read_only: bool = True, fmt: str | None = None,
    statement: int | None = None,
) -> int:
    """Run `sql` without a row limit and write every row to `path` (atomically).

    The format comes from `fmt` or the file extension (.csv, .json, .parquet). JSON is one
    array of objects. With several statements, all run and the rows of `statement` (from 1;
    default the last) are written. Returns the number of rows written.
    """
    import pyarrow as pa

    path = Path(path).expanduser()
    fmt = fmt or EXPORT_FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "json", "parquet"):
        raise BadInput(
            f"cannot tell the format of {path.name!r}: end it in .csv, .json or .parquet"
        )
    if path.is_dir():
        raise BadInput(f"export path {path} is a directory")
    if not path.parent.is_dir():
        raise BadInput(f"directory {path.parent} does not exist")
    done = ConsoleQuery(store, sql, read_only=read_only).arrows(None)
    pick = done[-1] if statement is None else done[max(0, min(len(done), statement) - 1)]
    _text, table, columns, _types, _ = pick
    if table is None:
        table = pa.table({c: pa.array([], pa.null()) for c in columns})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            tmp.write_text(
                json.dumps(table.to_pylist(), default=str, indent=1) + "\n", encoding="utf-8"
            )
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return table.num_rows


class SqlHistory:
    """Queries run in the console, oldest first, kept in DATA_DIR/sql_history.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[str] = []

    def load(self) -> SqlHistory:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            items = data.get("entries", []) if isinstance(data, dict) else []
            self.entries = [
                e["sql"] for e in items if isinstance(e, dict) and isinstance(e.get("sql"), str)
            ]
        except (OSError, ValueError):
            self.entries = []
        return self

    def add(self, sql: str) -> None:
        """Append a query (not twice in a row) and save the file."""
        sql = sql.strip()
        if not sql:
            return
        if sql in self.entries:
            self.entries.remove(sql)  # most recent use wins; no duplicates to scroll past
        self.entries.append(sql)
        del self.entries[:-HISTORY_MAX]
        self.save()

    def save(self) -> None:
        doc = {"version": 1, "entries": [{"sql": s} for s in self.entries]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            raise BadInput(f"cannot save SQL history to {self.path}: {e.strerror or e}") from None
