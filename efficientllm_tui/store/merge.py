"""Importing runs into the store: what a file to import is (an `efficientllm export` of one
table, or another efficientllm DuckDB file) and the SQL that merges it, in one transaction.

Why this shape: a merge must never be silent or partial. Every file is recognised by its
contents, never its name: Parquet and DuckDB by their magic bytes, an export by its columns
(each table of the schema has its own set; a column this version does not know means a newer
schema, and is refused). Everything is staged in temporary tables first, checked (a run in
two files, rows of runs no file holds), and only then written, inside the caller's
transaction, so any failure leaves the database as it was.

No `duckdb` import here (efficientllm_tui.store.db is the only module with one): the store
opens the connection and hands `merge` the way to migrate a copy of an older database file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from efficientllm_tui.store.bundle import first_line
from efficientllm_tui.store.schema import COLUMNS, DATA_TABLES, FIRST_COLUMNS, SCHEMA_VERSION

TABLES = ("runs", *DATA_TABLES)
"""The tables a run's rows live in, in the order they are staged."""

VIEWS = {"run_metrics", "leaderboard"}
"""Exportable views: derived numbers, not runs, so they cannot be imported."""

KINDS = ("duckdb", "parquet", "json", "csv")


@dataclass(frozen=True, slots=True)
class Source:
    """One file given to `efficientllm import`."""

    path: Path
    """The file as the user named it (messages use it)."""
    kind: str
    """`duckdb`, `parquet`, `json` or `csv` (KINDS)."""


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did, run by run."""

    imported: tuple[str, ...]
    """Runs that were not stored before and now are."""
    replaced: tuple[str, ...]
    """Runs stored before whose rows were replaced (`--replace`)."""
    skipped: tuple[str, ...]
    """Runs stored before and left as they were (no `--replace`)."""
    rows: dict[str, int] = field(default_factory=dict)
    """Table -> rows written."""
    files: tuple[str, ...] = ()
    """What each file held, one line each (`runs.parquet: runs, 3 rows`)."""


def identify(path: Path, target: Path) -> Source:
    """What kind of file `path` is, from its first bytes.

    Raises:
        BadInput: It cannot be read, is the target database itself, or is neither a DuckDB
            file nor an export (Parquet, a JSON array, CSV).
    """
    try:
        same = path.exists() and target.exists() and path.samefile(target)
        with path.open("rb") as f:
            head = f.read(4096)
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory; give the files `efficientllm export` "
                       "wrote, or a database file") from None
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror or e}") from None
    if same:
        raise BadInput(f"{path} is the database being imported into (--db); nothing to merge")
    if head[8:12] == b"DUCK":
        return Source(path, "duckdb")
    if head[:4] == b"PAR1":
        return Source(path, "parquet")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return Source(path, "json")
    first = text.split("\n", 1)[0]
    if path.suffix.lower() == ".csv" or "run_id" in first.split(","):
        return Source(path, "csv")
    raise BadInput(f"{path} is not an efficientllm export (parquet, json or csv from "
                   "`efficientllm export`) nor an efficientllm database")


def literal(text: str) -> str:
    """A SQL string literal (table functions and ATTACH take no bound parameters here)."""
    return "'" + text.replace("'", "''") + "'"


def match_table(path: Path, columns: Sequence[str]) -> str:
    """The table an export holds, from its columns.

    Raises:
        BadInput: A view's export, a newer schema's table, or no table of this schema.
    """
    cols = set(columns)
    if "workload" in cols:
        raise BadInput(f"{path} is an export of a view (run_metrics or leaderboard: derived "
                       "numbers, not runs); export the tables instead: `efficientllm export "
                       "--table runs` (and metrics, steps, samples, windows, events)")
    for table in TABLES:
        if FIRST_COLUMNS[table] <= cols:
            extra = sorted(cols - set(COLUMNS[table]))
            if extra:
                raise BadInput(f"{path} holds {table} with column(s) {', '.join(extra)} that "
                               "this efficientllm does not know (written by a newer version?); "
                               "upgrade efficientllm to import it")
            return table
    raise BadInput(f"{path} is not an efficientllm export: its columns "
                   f"({', '.join(sorted(cols)[:8])}) match no table of the database")


def _reader(src: Source, columns: Sequence[str] | None = None, table: str | None = None
            ) -> str:
    """The FROM clause that reads an export file; with `columns`, typed for a safe cast
    (JSON columns kept as JSON text, everything else as text DuckDB casts)."""
    where = literal(str(src.path))
    if src.kind == "parquet":
        return f"read_parquet({where})"
    if src.kind == "csv":
        # `""` is an empty string in an export, an empty field is NULL.
        return (f"read_csv({where}, header = true, all_varchar = true, "
                "allow_quoted_nulls = false)")
    if columns is None or table is None:
        return f"read_json({where}, format = 'array')"
    # Named types: auto-detection would turn a JSON column into a STRUCT of every key seen.
    types = {c: "JSON" if COLUMNS[table][c] == "JSON" else "VARCHAR" for c in columns}
    spec = ", ".join(f"{literal(c)}: {literal(t)}" for c, t in types.items())
    return f"read_json({where}, format = 'array', columns = {{{spec}}})"


def _guarded(path: Path, action: Callable[[], Any]) -> Any:
    """Run `action`; a failure while reading a file's contents names the file."""
    try:
        return action()
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - DuckDB's errors, whatever their class
        raise BadInput(f"{path} cannot be imported: {first_line(e)}") from None


def _describe(con: Any, src: Source) -> list[str]:
    rows = _guarded(src.path, lambda: con.execute(
        f"DESCRIBE SELECT * FROM {_reader(src)}").fetchall())
    return [str(r[0]) for r in rows]


def _cast(table: str, column: str) -> str:
    return f'CAST("{column}" AS {COLUMNS[table][column]})'


def attached_version(con: Any, alias: str) -> int | None:
    """The schema version of database `alias` attached to `con`; None when it is not an
    efficientllm database (no schema_meta)."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
        "AND table_name = 'schema_meta'", [alias]).fetchall()
    if not found[0][0]:
        return None
    rows = con.execute(f"SELECT value FROM {alias}.main.schema_meta "
                       "WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else None


def _attach(con: Any, src: Source, alias: str, scratch: Path,
            migrate_copy: Callable[[Path], None]) -> str:
    """Attach database `src` read-only, checked for its schema version: one of an older
    schema is copied into `scratch` and the copy migrated (the file stays as it was), one
    of a newer schema or without one is refused. Returns the alias to read from.

    Nothing is detached: DuckDB refuses DETACH inside a transaction that has read from the
    database; the attachments end with the connection.
    """
    _guarded(src.path, lambda: con.execute(
        f"ATTACH {literal(str(src.path))} AS {alias} (READ_ONLY)"))
    version = attached_version(con, alias)
    if version == SCHEMA_VERSION:
        return alias
    if version is None:
        raise BadInput(f"{src.path} is a DuckDB database but not efficientllm's (no "
                       "schema_meta table); nothing was imported")
    if version > SCHEMA_VERSION:
        raise BadInput(f"{src.path} has schema version {version}, newer than this efficientllm "
                       f"understands ({SCHEMA_VERSION}); upgrade efficientllm to import it; "
                       "nothing was imported")
    copy = scratch / f"{alias}.duckdb"
    shutil.copyfile(src.path, copy)
    wal = src.path.with_name(src.path.name + ".wal")
    if wal.exists():  # changes not yet checkpointed belong to the copy too
        shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
    migrate_copy(copy)
    con.execute(f"ATTACH {literal(str(copy))} AS {alias}_migrated (READ_ONLY)")
    return f"{alias}_migrated"


def _stage(con: Any, sources: Sequence[Source], scratch: Path,
           migrate_copy: Callable[[Path], None]) -> tuple[list[str], set[str]]:
    """Copy every file's rows into temp tables `_import_<table>` (the current schema's
    columns, NULL where an older file lacks one). Returns a line per file and the tables
    the import carries."""
    for table in TABLES:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _import_{table} AS "
                    f"SELECT *, '' AS _file FROM main.{table} LIMIT 0")
    lines: list[str] = []
    carried: set[str] = set()
    for i, src in enumerate(sources):
        if src.kind == "duckdb":
            alias = _attach(con, src, f"_import_src{i}", scratch, migrate_copy)
            held = []
            for table in TABLES:
                cols = ", ".join(f'"{c}"' for c in COLUMNS[table])
                n = con.execute(f"INSERT INTO _import_{table} ({cols}, _file) SELECT {cols}, "
                                f"? FROM {alias}.main.{table}", [str(src.path)]).fetchall()
                held.append(f"{table} {n[0][0] if n else 0}")
                carried.add(table)
            lines.append(f"{src.path}: database, rows: {', '.join(held)}")
            continue
        columns = _describe(con, src)
        table = match_table(src.path, columns)
        cols = ", ".join(f'"{c}"' for c in columns)
        select = ", ".join(_cast(table, c) for c in columns)
        sql = (f"INSERT INTO _import_{table} ({cols}, _file) SELECT {select}, ? "
               f"FROM {_reader(src, columns, table)}")
        path = str(src.path)
        n = _guarded(src.path, lambda: con.execute(sql, [path]).fetchall())  # noqa: B023
        carried.add(table)
        lines.append(f"{src.path}: {table}, {n[0][0] if n else 0} rows")
    return lines, carried


def _check(con: Any) -> None:
    """Refuse what cannot be merged without guessing: one run in two files, and rows of runs
    that no file of this import holds."""
    twice = con.execute("SELECT run_id, list(DISTINCT _file ORDER BY _file), count(*) "
                        "FROM _import_runs GROUP BY run_id HAVING count(*) > 1 "
                        "ORDER BY run_id LIMIT 1").fetchall()
    if twice:
        run_id, files, n = twice[0]
        where = " and ".join(files) if len(files) > 1 else f"{files[0]} ({n} times)"
        raise BadInput(f"run {run_id} is in {where}; import one copy (one file at a time, "
                       "with --replace for the one to keep)")
    for table in DATA_TABLES:
        orphans = con.execute(
            f"SELECT count(DISTINCT run_id), min(run_id), min(_file) FROM _import_{table} "
            "WHERE run_id NOT IN (SELECT run_id FROM _import_runs)").fetchall()
        if orphans and orphans[0][0]:
            n, run_id, path = orphans[0]
            raise BadInput(f"{path} holds {table} rows of {n} run(s) that no runs file of "
                           f"this import holds (e.g. {run_id}); give the runs export too "
                           "(`efficientllm export --table runs`)")


def merge(con: Any, sources: Sequence[Source], *, replace: bool, scratch: Path,
          migrate_copy: Callable[[Path], None]) -> ImportReport:
    """Merge `sources` into the open database, inside the caller's transaction.

    A run already stored (same run_id) is skipped, or with `replace` its rows are replaced:
    the runs row, and the rows of every table this import carries (a table the import does
    not carry keeps the stored rows).

    Args:
        con: The open database, in a transaction.
        sources: The files (`identify`).
        replace: Replace stored runs instead of skipping them.
        scratch: A folder for migrated copies of older database files.
        migrate_copy: Migrates the database file it is given to this schema version.

    Raises:
        BadInput: A file that is not an export, an unknown column, a value that does not
            convert, a database of a newer schema or not efficientllm's, a run in two files,
            rows of runs no runs file holds.
    """
    lines, carried = _stage(con, sources, scratch, migrate_copy)
    _check(con)
    incoming = [r[0] for r in con.execute(
        "SELECT run_id FROM _import_runs ORDER BY run_id").fetchall()]
    stored = {r[0] for r in con.execute(
        "SELECT run_id FROM main.runs WHERE run_id IN (SELECT run_id FROM _import_runs)"
    ).fetchall()}
    if replace:
        for table in TABLES:
            if table == "runs" or table in carried:
                con.execute(f"DELETE FROM main.{table} WHERE run_id IN "
                            "(SELECT run_id FROM _import_runs)")
    else:
        for table in TABLES:
            con.execute(f"DELETE FROM _import_{table} WHERE run_id IN "
                        "(SELECT run_id FROM main.runs)")
    rows: dict[str, int] = {}
    for table in TABLES:
        cols = ", ".join(f'"{c}"' for c in COLUMNS[table])
        n = con.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} "
                        f"FROM _import_{table}").fetchall()
        rows[table] = int(n[0][0]) if n else 0
        con.execute(f"DROP TABLE _import_{table}")
    new = tuple(r for r in incoming if r not in stored)
    old = tuple(r for r in incoming if r in stored)
    return ImportReport(imported=new, replaced=old if replace else (),
                        skipped=() if replace else old, rows=rows, files=tuple(lines))
