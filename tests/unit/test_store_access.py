"""The DuckDB store's queries, errors, locking and export: read-only SQL by default, bad SQL
as one line, corrupt files left untouched, writers waiting on a lock, export formats."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from efficientllm_tui.errors import (
    BadInput,
    CorruptDatabase,
    DatabaseLocked,
    QueryError,
)
from efficientllm_tui.store.db import (
    Store,
)
from tests.unit import store_rows
from tests.unit.store_rows import (
    UTC,
    make_bundle,
)

store = store_rows.store  # a fixture, used by name


# ----------------------------------------------------------------------------- query


def test_query_is_read_only_by_default(store: Store) -> None:
    store.ingest(make_bundle())
    with pytest.raises(QueryError, match="^read-only: .*INSERT"):
        store.query("INSERT INTO runs (run_id) VALUES ('x')")
    assert store.run_ids() == {"r1"}
    store.query("INSERT INTO runs (run_id) VALUES ('x')", read_only=False)
    assert store.run_ids() == {"r1", "x"}


def test_query_results_limits_and_statements(store: Store) -> None:
    store.ingest(make_bundle())
    res = store.query("SELECT run_id, started_at, params FROM runs")
    assert res.types == ["VARCHAR", "TIMESTAMP WITH TIME ZONE", "JSON"]
    assert res.rows[0][1] == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    res = store.query("SELECT range AS i FROM range(5000)", limit=3)
    assert (res.rows, res.truncated) == ([(0,), (1,), (2,)], True)
    res = store.query("SELECT 1 AS a; SELECT 2 AS b", limit=3)
    assert (res.columns, res.rows, res.truncated) == (["b"], [(2,)], False)
    assert store.query("SELECT ? AS x", params=[7]).rows == [(7,)]


@pytest.mark.parametrize(
    "sql",
    ["SELEC 1", "SELECT * FROM nope", "SELECT nope FROM runs", "SELECT 'a'::INTEGER", "SELECT 1 +"],
)
def test_bad_sql_is_one_line_without_traceback(store: Store, sql: str) -> None:
    store.ingest(make_bundle())
    with pytest.raises(QueryError) as info:
        store.query(sql)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert "Traceback" not in msg and "LINE 1" not in msg and "^" not in msg


# ----------------------------------------------------------------------------- damage


def _real_db_bytes(tmp_path: Path) -> bytes:
    src = Store(tmp_path / "src.duckdb")
    src.ingest(make_bundle(n_samples=2000))
    return src.path.read_bytes()


@pytest.mark.parametrize("kind", ["random", "text", "truncated", "empty"])
def test_corrupt_file_is_reported_and_left_untouched(tmp_path: Path, kind: str) -> None:
    data = {
        "random": random.Random(1).randbytes(20_000),
        "text": b"run_id,status\nr1,ok\n" * 100,
        "truncated": _real_db_bytes(tmp_path)[:12_288] if kind == "truncated" else b"",
        "empty": b"",
    }[kind]
    path = tmp_path / "bad" / "efficientllm.duckdb"
    path.parent.mkdir()
    path.write_bytes(data)
    store = Store(path, lock_timeout_s=1)
    for call in (
        store.check,
        store.list_runs,
        lambda: store.query("SELECT 1"),
        lambda: store.ingest(make_bundle()),
        lambda: store.query("SELECT 1", read_only=False),
    ):
        with pytest.raises(CorruptDatabase) as info:
            call()
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["efficientllm.duckdb"]


# ----------------------------------------------------------------------------- locking

_HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextlib.contextmanager
def _held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the database open for write for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.wait(timeout=30)


def test_write_waits_for_a_lock_and_succeeds(store: Store) -> None:
    store.ingest(make_bundle())
    with _held(store.path, 1.5):
        t = time.monotonic()
        store.upsert_run({"run_id": "late", "status": "queued"})  # lock_timeout_s=5
        waited = time.monotonic() - t
    assert waited > 0.8
    assert store.run_ids() == {"r1", "late"}


def test_lock_held_too_long_raises_database_locked(store: Store) -> None:
    store.ingest(make_bundle())
    quick = Store(store.path, lock_timeout_s=0.3)
    with _held(store.path, 1.5) as proc:
        t = time.monotonic()
        with pytest.raises(DatabaseLocked) as info:
            quick.upsert_run({"run_id": "late"})
        assert time.monotonic() - t < 1.2
        with pytest.raises(DatabaseLocked):
            quick.list_runs()  # reads meet the same lock
    msg = str(info.value)
    assert f"pid {proc.pid}" in msg and "try again" in msg and "\n" not in msg
    assert store.run_ids() == {"r1"}


# ----------------------------------------------------------------------------- export


def test_export_round_trips(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("a", metrics={"amu": 0.5, "it": 1.0}))
    store.ingest(make_bundle("b", metrics={"amu": 0.25}))

    out = tmp_path / "out" / "runs.json"
    assert store.export(out, "json") == 2
    doc = json.loads(out.read_text())
    assert [(r["run_id"], r["amu"], r["it"]) for r in doc] == [("a", 0.5, 1.0), ("b", 0.25, None)]

    assert store.export(tmp_path / "m.csv", "csv", run_ids=["b"], table="metrics") == 1
    csv = pa_csv.read_csv(tmp_path / "m.csv").to_pylist()
    assert csv == [{"run_id": "b", "name": "amu", "value": 0.25, "unit": None, "source": "runner",
                    "note": None}]

    assert store.export(tmp_path / "s.parquet", "parquet", ["a"], table="samples") == 5
    assert pq.read_table(tmp_path / "s.parquet").to_pylist() == store.samples("a").to_pylist()

    store.export(tmp_path / "e.json", "json", ["a"], table="events")
    events = json.loads((tmp_path / "e.json").read_text())
    assert events[0]["payload"] == {"pid": 7}  # JSON columns stay JSON
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_rejects_bad_input(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("a"))
    with pytest.raises(BadInput, match="unknown run id.*: nope, gone"):
        store.export(tmp_path / "x.json", "json", ["a", "nope", "gone"])
    with pytest.raises(BadInput, match="format"):
        store.export(tmp_path / "x.xml", "xml")
    with pytest.raises(BadInput, match="cannot export"):
        store.export(tmp_path / "x.json", "json", table="schema_meta")
    assert not (tmp_path / "x.json").exists()
