"""Read-only SQL writes nothing anywhere: `efficientllm sql`, `Store.query`, the console's query
and its export refuse COPY, EXPORT, ATTACH, INSTALL/LOAD, SET/RESET, secrets, files outside the
database and writes to it, as one "read-only:" line; `--write` keeps them; reads still work."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest

from efficientllm_tui import cli
from efficientllm_tui.errors import DatabaseLocked, QueryError
from efficientllm_tui.store.console import ConsoleQuery, export_query
from efficientllm_tui.store.db import Store
from tests.unit import store_rows
from tests.unit.store_rows import UTC, make_bundle

store = store_rows.store  # a fixture, used by name

FILES = "no file outside the database is read or written in read-only mode"
EXTENSIONS_REFUSED = ("extensions are disabled in read-only queries (INSTALL and LOAD, and the "
                      "functions that would load one)")
# (statement, what the one line says after "read-only: "); {out} is a folder of the test's.
REFUSED = [
    ("COPY (SELECT 42 AS x) TO '{out}/x.csv'", "cannot use file {out}/x.csv: " + FILES),
    ("COPY runs TO '{out}/runs.parquet' (FORMAT parquet)",
     "cannot use file {out}/runs.parquet: " + FILES),
    ("EXPORT DATABASE '{out}/dump'", "cannot use file {out}/dump/"),
    ("ATTACH '{out}/new.duckdb' AS n", "cannot use file {out}/new.duckdb: " + FILES),
    ("INSTALL httpfs", EXTENSIONS_REFUSED),
    ("LOAD httpfs", EXTENSIONS_REFUSED),
    ("SET threads = 1", "setting threads cannot be changed in read-only mode"),
    ("SET memory_limit = '1GB'", "setting memory_limit cannot be changed in read-only mode"),
    ("SET enable_external_access = true",
     "setting enable_external_access cannot be changed in read-only mode"),
    ("SET lock_configuration = false",
     "setting lock_configuration cannot be changed in read-only mode"),
    ("RESET threads", "setting threads cannot be changed in read-only mode"),
    ("SET profiling_output = '{out}/profile.json'",
     "setting profiling_output cannot be changed in read-only mode"),
    ("PRAGMA enable_profiling = 'json'",
     "setting enable_profiling cannot be changed in read-only mode"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "cannot use directory "),
    ("SELECT * FROM read_csv('/etc/passwd')", "cannot use file /etc/passwd: " + FILES),
    ("SELECT * FROM read_text('{out}/seen.txt')", "cannot use file {out}/seen.txt: " + FILES),
    ("INSERT INTO runs (run_id) VALUES ('x')", 'Cannot execute statement of type "INSERT"'),
    ("DELETE FROM runs", 'Cannot execute statement of type "DELETE"'),
    ("CREATE TABLE t (a INTEGER)", 'Cannot execute statement of type "CREATE"'),
]
IDS = ["copy-select-to", "copy-table-to", "export-database", "attach-file", "install", "load",
       "set-threads", "set-memory-limit", "set-external-access", "set-lock", "reset",
       "set-profiling-output", "pragma-profiling", "create-secret", "read-etc-passwd",
       "read-text", "insert", "delete", "create-table"]


@pytest.fixture
def db(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """One stored run; the data dir and an output folder exist (so nothing else is made)."""
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "seen.txt").write_text("secret\n")
    store.ingest(make_bundle())
    return store


def _tree(root: Path) -> dict[str, object]:
    """Every folder and file under root, a file with its content's hash; under DuckDB's folder
    in the user's home (extensions, secrets), every folder and file with its size and time."""
    tree: dict[str, object] = {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in root.rglob("*")
    }
    duckdb_home = Path.home() / ".duckdb"
    for p in [duckdb_home, *duckdb_home.rglob("*")] if duckdb_home.exists() else []:
        tree[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns)
    return tree


def _cli(capsys: pytest.CaptureFixture[str], store: Store, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sql", *argv, "--db", str(store.path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("sql", "said"), REFUSED, ids=IDS)
def test_read_only_sql_refuses_and_writes_nothing(
    db: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, said: str
) -> None:
    out = tmp_path / "out"
    sql, said = sql.format(out=out), "read-only: " + said.format(out=out)
    before = _tree(tmp_path)
    code, stdout, stderr = _cli(capsys, db, sql)
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1 and stderr.endswith("; use --write to allow it\n")
    assert stderr.startswith("efficientllm: error: " + said), stderr
    for run in (lambda: db.query(sql), lambda: ConsoleQuery(db, sql).run(),
                lambda: export_query(db, sql, out / "result.csv")):
        with pytest.raises(QueryError) as info:
            run()
        assert str(info.value).startswith(said) and "\n" not in str(info.value)
        assert info.value.title == "Read-only"
    assert _tree(tmp_path) == before
    assert db.run_ids() == {"r1"}


def test_write_mode_keeps_copy_insert_and_set(
    db: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = _cli(capsys, db, f"COPY (SELECT 42 AS x) TO '{out}/x.csv'", "--write")
    assert (code, err, (out / "x.csv").read_text()) == (0, "", "x\n42\n")
    code, _, err = _cli(capsys, db, "INSERT INTO runs (run_id) VALUES ('w')", "--write")
    assert (code, err, db.run_ids()) == (0, "", {"r1", "w"})
    ConsoleQuery(db, f"COPY runs (run_id) TO '{out}/ids.csv'", read_only=False).run()
    assert (out / "ids.csv").read_text() == "run_id\nr1\nw\n"
    got = db.query("SET threads = 1; SELECT current_setting('threads')", read_only=False)
    assert got.rows == [(1,)]


def test_read_only_reads_still_work(db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert db.query("SELECT run_id, technique, it FROM run_metrics").rows == [("r1", "fp32", 42.0)]
    assert db.query("SELECT metric, rank FROM leaderboard ORDER BY metric").rows == [
        ("amu", 1), ("it", 1)]
    tables = db.query("SELECT table_name FROM duckdb_tables() ORDER BY 1").rows
    assert [t for (t,) in tables] == [
        "events", "metrics", "runs", "samples", "schema_meta", "steps", "windows"]
    got = db.query("SELECT current_database(), current_setting('TimeZone'), started_at, "
                   "params->>'k' FROM runs")
    assert got.rows == [("efficientllm", "UTC", datetime(2027, 1, 15, 8, 0, tzinfo=UTC), "1")]
    # In-memory scratch of the query's own (gone when it ends) writes no file.
    scratch = db.query("CREATE TEMP TABLE t AS SELECT 2 AS a; SELECT a * 21 FROM t")
    assert scratch.rows == [(42,)]
    assert ConsoleQuery(db, "SELECT count(*) FROM samples").run().rows == [(5,)]
    code, out, err = _cli(capsys, db, "SELECT run_id, it FROM run_metrics", "--format", "csv")
    assert (code, out, err) == (0, "run_id,it\nr1,42.0\n", "")


def test_read_only_query_waits_for_a_writer_of_this_process(db: Store) -> None:
    impatient = Store(db.path, lock_timeout_s=0.2)
    with db.connect(read_only=False):
        with pytest.raises(DatabaseLocked, match="another connection of this process"):
            impatient.query("SELECT 1")
    with db.connect(read_only=True) as con:  # a reader alongside is fine
        assert impatient.query("SELECT count(*) FROM runs").rows == [(1,)]
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]


def test_read_only_query_of_an_older_file_migrates_it_first(tmp_path: Path) -> None:
    from efficientllm_tui.store.schema import SCHEMA_VERSION
    from tests.unit.store_rows import version_1_file

    path = version_1_file(tmp_path / "v1.duckdb")
    got = Store(path).query(
        "SELECT (SELECT value FROM schema_meta WHERE key = 'schema_version'), run_id, status "
        "FROM runs"
    )
    assert got.rows == [(str(SCHEMA_VERSION), "old", "ok")]
    with pytest.raises(QueryError, match="^read-only: setting threads cannot be changed"):
        Store(path).query("SET threads = 1")
