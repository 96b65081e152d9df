"""The DuckDB store: schema and migrations, ingest, views, errors, locking and export."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from efficientllm_tui.errors import (
    BadInput,
    CorruptDatabase,
    DatabaseLocked,
    QueryError,
    StoreError,
)
from efficientllm_tui.store import (
    COLUMNS,
    METRIC_DIRECTIONS,
    RUN_METRIC_COLUMNS,
    SCHEMA_VERSION,
    RunBundle,
    Store,
)
from profiling.sample import FIELD_NAMES, Sample

T0 = 1_800_000_000_000_000_000  # ns
UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)
TABLES = ("runs", "samples", "steps", "windows", "events", "metrics")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db" / "efficientllm.duckdb", lock_timeout_s=5)


def _samples(n: int, device: str = "gpu0") -> list[Sample]:
    return [
        Sample(
            t_ns=T0 + i * 100_000_000,
            host="h",
            device=device,
            source="simulated",
            mem_used_bytes=1000 + i,
            mem_total_bytes=4000,
            util_pct=50.0,
            sm_active_pct=40.0 + i,
            power_w=100.0 + i,
        )
        for i in range(n)
    ]


def _metric(name: str, value: float | None, unit: str = "", source: str = "runner") -> dict:
    return {"name": name, "value": value, "unit": unit, "source": source}


def _bundle(
    run_id: str = "r1",
    *,
    model: str = "tiny",
    status: str = "ok",
    metrics: dict[str, float] | None = None,
    samples: object = None,
    n_samples: int = 5,
) -> RunBundle:
    return RunBundle(
        run={
            "run_id": run_id,
            "family": "inference",
            "technique": "fp32",
            "model": model,
            "group_name": "bit_width",
            "device": "cuda:0",
            "seed": 0,
            "batch_size": 1,
            "status": status,
            "simulated": True,
            "weights": "random",
            "params": {"k": 1},
            "info": json.dumps({"total_params": 123}),
            "created_at": T0,
            "started_at": datetime(2027, 1, 15, 8, 0, tzinfo=UTC),
            "ended_at": "2027-01-15T08:01:00+00:00",
        },
        samples=_samples(n_samples) if samples is None else samples,  # type: ignore[arg-type]
        steps=[
            {
                "step": i,
                "phase": "measure",
                "t_ns": T0 + i,
                "latency_s": 0.5 + i,
                "tokens": 32,
                "decode_s": 0.1,
            }
            for i in range(3)
        ],
        windows=[
            {
                "name": "measure",
                "device": "gpu0",
                "t0_ns": T0,
                "t1_ns": T0 + 10**9,
                "energy_j": 55.5,
                "energy_source": "nvml",
            }
        ],
        events=[
            {"t_ns": T0, "kind": "started", "payload": {"pid": 7}},
            {"t_ns": T0, "kind": "log", "message": "same tick, kept in order"},
            {"t_ns": T0 + 1, "kind": "result", "payload": {"status": status}},
        ],
        metrics=[_metric(k, v) for k, v in (metrics or {"amu": 0.25, "it": 42.0}).items()],
    )


def _counts(store: Store) -> dict[str, int]:
    return store.stats()["rows"]


# ----------------------------------------------------------------------------- schema


def test_migration_creates_schema_and_version(store: Store) -> None:
    assert not store.path.parent.exists()
    with store.connect():
        pass
    stats = store.stats()
    assert stats["schema_version"] == SCHEMA_VERSION == 1
    for table, cols in COLUMNS.items():
        got = store.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            params=[table],
        ).rows
        types = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
        assert got == [(n, types.get(t, t)) for n, t in cols.items()], table
    views = store.query("SELECT view_name FROM duckdb_views() WHERE NOT internal").rows
    assert {v for (v,) in views} == {"run_metrics", "leaderboard"}


def test_samples_columns_are_the_sample_fields() -> None:
    assert tuple(COLUMNS["samples"]) == ("run_id", *FIELD_NAMES)


def test_reopen_is_a_noop(store: Store) -> None:
    with store.connect():
        pass
    first = store.query("SELECT * FROM schema_meta ORDER BY key").rows
    with store.connect():
        pass
    store.check()
    assert store.query("SELECT * FROM schema_meta ORDER BY key").rows == first


def test_newer_schema_is_refused(store: Store) -> None:
    store.ingest(_bundle())
    with store.connect() as con:
        con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    for call in (store.check, store.list_runs, lambda: store.upsert_run({"run_id": "x"})):
        with pytest.raises(StoreError, match="upgrade efficientllm") as info:
            call()
        assert not isinstance(info.value, CorruptDatabase)


# ----------------------------------------------------------------------------- ingest


def test_ingest_round_trip(store: Store) -> None:
    store.ingest(_bundle(n_samples=5))
    assert _counts(store) == {
        "runs": 1,
        "samples": 5,
        "steps": 3,
        "windows": 1,
        "events": 3,
        "metrics": 2,
    }
    run = store.get_run("r1")
    assert run is not None
    assert run["params"] == {"k": 1} and run["info"] == {"total_params": 123}
    assert run["created_at"] == datetime.fromtimestamp(T0 / 1e9, tz=UTC)
    assert run["ended_at"] == datetime(2027, 1, 15, 8, 1, tzinfo=UTC)
    assert run["ingested_at"] is not None and run["pid"] is None
    assert run["metrics"] == {"amu": (0.25, "", "runner"), "it": (42.0, "", "runner")}

    table = store.samples("r1")
    assert table.column_names == ["run_id", *FIELD_NAMES]
    assert table.to_pylist()[2] == {"run_id": "r1", **_samples(5)[2].to_dict()}
    assert store.samples("r1", device="cpu").num_rows == 0

    steps = store.steps("r1").to_pylist()
    assert [s["latency_s"] for s in steps] == [0.5, 1.5, 2.5]
    assert json.loads(steps[0]["extra"]) == {"decode_s": 0.1}  # unknown keys kept
    assert store.windows("r1") == [
        {
            "name": "measure",
            "device": "gpu0",
            "t0_ns": T0,
            "t1_ns": T0 + 10**9,
            "energy_j": 55.5,
            "energy_source": "nvml",
        }
    ]
    assert store.events("r1") == [
        {"t_ns": T0, "kind": "started", "payload": {"pid": 7}},
        {"t_ns": T0, "kind": "log", "payload": {"message": "same tick, kept in order"}},
        {"t_ns": T0 + 1, "kind": "result", "payload": {"status": "ok"}},
    ]
    assert store.run_ids() == {"r1"}


def test_ingest_samples_from_arrow(store: Store) -> None:
    # Columns in another order, narrower types, some missing: cast by name, missing = NULL.
    table = pa.table(
        {
            "device": ["cpu", "cpu"],
            "t_ns": pa.array([2, 1], pa.int64()),
            "source": ["psutil", "psutil"],
            "host": ["h", "h"],
            "rss_bytes": pa.array([10, 20], pa.int32()),
        }
    )
    store.ingest(_bundle(samples=table))
    rows = store.samples("r1").to_pylist()
    assert [(r["t_ns"], r["rss_bytes"], r["power_w"]) for r in rows] == [
        (1, 20, None),
        (2, 10, None),
    ]
    with pytest.raises(BadInput, match="unknown column"):
        store.ingest(_bundle(samples=table.append_column("bogus", pa.array([1, 2]))))


def test_ingest_is_idempotent(store: Store) -> None:
    store.ingest(_bundle(n_samples=5))
    first = _counts(store)
    store.ingest(_bundle(n_samples=5))
    assert _counts(store) == first
    store.ingest(_bundle(n_samples=2, metrics={"amu": 0.5}))  # a re-ingest replaces
    assert _counts(store)["samples"] == 2
    assert store.get_run("r1")["metrics"] == {"amu": (0.5, "", "runner")}  # type: ignore[index]


def test_ingest_rejects_bad_rows_and_writes_nothing(store: Store) -> None:
    with pytest.raises(BadInput, match="unknown run column"):
        store.ingest(RunBundle(run={"run_id": "x", "nope": 1}))
    with pytest.raises(BadInput, match="unknown status"):
        store.ingest(RunBundle(run={"run_id": "x", "status": "done"}))
    with pytest.raises(BadInput, match="duplicate metric"):
        store.ingest(RunBundle(run={"run_id": "x"}, metrics=[_metric("amu", 1), _metric("amu", 2)]))
    with pytest.raises(BadInput, match="latency_s"):
        store.ingest(RunBundle(run={"run_id": "x"}, steps=[{"latency_s": "slow"}]))
    assert store.run_ids() == set()


def test_upsert_run_and_set_status(store: Store) -> None:
    store.upsert_run({"run_id": "q", "status": "queued", "model": "tiny", "pid": 12})
    store.upsert_run({"run_id": "q", "status": "running"})  # other columns untouched
    run = store.get_run("q")
    assert run is not None and (run["status"], run["model"], run["pid"]) == ("running", "tiny", 12)
    store.set_status("q", "failed", "crash", "segfault")
    run = store.get_run("q")
    assert run is not None and (run["status"], run["error_type"], run["error_text"]) == (
        "failed",
        "crash",
        "segfault",
    )
    with pytest.raises(BadInput, match="unknown run id"):
        store.set_status("nope", "ok")
    with pytest.raises(BadInput, match="unknown status"):
        store.set_status("q", "finished")


def test_delete_runs_removes_rows_from_every_table(store: Store) -> None:
    store.ingest(_bundle("a"))
    store.ingest(_bundle("b"))
    assert store.delete_runs(["a", "missing"]) == 1
    for table in TABLES:
        ids = {r for (r,) in store.query(f"SELECT DISTINCT run_id FROM {table}").rows}
        assert ids == {"b"}, table
    assert store.delete_runs([]) == 0


def test_missing_database_reads_as_empty(tmp_path: Path) -> None:
    store = Store(tmp_path / "none.duckdb")
    assert store.list_runs() == [] and store.get_run("x") is None and store.run_ids() == set()
    assert store.samples("x").num_rows == 0 and store.steps("x").num_rows == 0
    assert store.events("x") == [] and store.windows("x") == [] and store.leaderboard() == []
    assert store.stats()["exists"] is False and store.delete_runs(["x"]) == 0
    store.check()
    with pytest.raises(StoreError, match="no database at .*run something first"):
        store.query("SELECT 1")
    assert not store.path.exists()


# ----------------------------------------------------------------------------- views


def test_list_runs_filters_orders_and_pages(store: Store) -> None:
    for i, model in enumerate(["tiny", "tiny", "smollm2-135m"]):
        b = _bundle(f"r{i}", model=model, metrics={"amu": 0.1 * (3 - i), "it": 10.0 * i})
        b.run["started_at"] = T0 + i  # type: ignore[index]
        store.ingest(b)
    assert [r["run_id"] for r in store.list_runs()] == ["r2", "r1", "r0"]
    assert [r["run_id"] for r in store.list_runs(descending=False, limit=2)] == ["r0", "r1"]
    assert [r["run_id"] for r in store.list_runs(limit=1, offset=1)] == ["r1"]
    assert [r["run_id"] for r in store.list_runs(model="tiny")] == ["r1", "r0"]
    assert [r["run_id"] for r in store.list_runs(model=["smollm2-135m"], status="ok")] == ["r2"]
    assert store.list_runs(family="pretraining") == []
    rows = store.list_runs(order_by="amu", descending=False)
    assert [(r["run_id"], r["amu"], r["it"]) for r in rows] == [
        ("r2", pytest.approx(0.1), 20.0),
        ("r1", pytest.approx(0.2), 10.0),
        ("r0", pytest.approx(0.3), 0.0),
    ]
    assert rows[0]["params"] == {"k": 1}
    with pytest.raises(BadInput):
        store.list_runs(order_by="1; DROP TABLE runs")


def test_run_metrics_pivots_metrics_into_columns(store: Store) -> None:
    store.ingest(
        _bundle(
            "a",
            metrics={"amu": 0.5, "pcu": 0.8, "al_s": 0.02, "eval_ppl": 12.5, "not_a_column": 1.0},
        )
    )
    store.upsert_run({"run_id": "empty", "status": "queued"})
    res = store.query("SELECT * FROM run_metrics ORDER BY run_id")
    assert res.columns == [
        "run_id",
        "family",
        "technique",
        "model",
        "group_name",
        "status",
        "simulated",
        "started_at",
        *RUN_METRIC_COLUMNS,
    ]
    a, empty = (dict(zip(res.columns, row, strict=True)) for row in res.rows)
    assert (a["amu"], a["pcu"], a["al_s"], a["eval_ppl"], a["it"]) == (0.5, 0.8, 0.02, 12.5, None)
    assert empty["status"] == "queued" and all(empty[m] is None for m in RUN_METRIC_COLUMNS)


def test_leaderboard_scores_and_ranks(store: Store) -> None:
    # al_s is lower-is-better, it higher-is-better, mcr is equal everywhere (max = min).
    values = {"r1": (1.0, 10.0), "r2": (2.0, 40.0), "r3": (3.0, 20.0)}
    for rid, (al, it) in values.items():
        store.ingest(_bundle(rid, metrics={"al_s": al, "it": it, "mcr": 2.0, "amu_gib": 1.0}))
    store.ingest(_bundle("failed", status="failed", metrics={"al_s": 0.1}))  # not ranked
    store.ingest(_bundle("other", model="smollm2-135m", metrics={"al_s": 9.0}))  # own group

    board = {(b["run_id"], b["metric"]): b for b in store.leaderboard()}
    expected = {
        ("r1", "al_s"): (1.0, 1),
        ("r2", "al_s"): (0.55, 2),
        ("r3", "al_s"): (0.1, 3),
        ("r1", "it"): (0.1, 3),
        ("r2", "it"): (1.0, 1),
        ("r3", "it"): (0.4, 2),
        ("r1", "mcr"): (1.0, 1),
        ("r2", "mcr"): (1.0, 1),
        ("r3", "mcr"): (1.0, 1),
        ("other", "al_s"): (1.0, 1),
    }
    assert set(board) == set(expected)  # amu_gib is not a leaderboard metric
    for key, (score, rank) in expected.items():
        assert board[key]["score"] == pytest.approx(score), key
        assert board[key]["rank"] == rank, key
    assert board[("r1", "al_s")]["higher_is_better"] is False
    assert board[("r2", "it")]["higher_is_better"] is True

    # With run ids, the normalisation is taken over the selection only.
    sub = {(b["run_id"], b["metric"]): b for b in store.leaderboard(run_ids=["r1", "r3"])}
    assert sub[("r1", "al_s")]["score"] == pytest.approx(1.0)
    assert sub[("r3", "al_s")]["score"] == pytest.approx(0.1)
    assert sub[("r3", "it")]["score"] == pytest.approx(1.0)


def test_metric_directions_follow_the_paper() -> None:
    lower = {m for m, higher in METRIC_DIRECTIONS.items() if not higher}
    assert lower == {"amu", "al_s", "aec_w", "eval_ppl", "loss"}
    assert set(METRIC_DIRECTIONS) - lower == {"pcu", "tt", "st", "it", "mcr"}


# ----------------------------------------------------------------------------- query


def test_query_is_read_only_by_default(store: Store) -> None:
    store.ingest(_bundle())
    with pytest.raises(QueryError, match="^read-only: .*INSERT"):
        store.query("INSERT INTO runs (run_id) VALUES ('x')")
    assert store.run_ids() == {"r1"}
    store.query("INSERT INTO runs (run_id) VALUES ('x')", read_only=False)
    assert store.run_ids() == {"r1", "x"}


def test_query_results_limits_and_statements(store: Store) -> None:
    store.ingest(_bundle())
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
    store.ingest(_bundle())
    with pytest.raises(QueryError) as info:
        store.query(sql)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert "Traceback" not in msg and "LINE 1" not in msg and "^" not in msg


# ----------------------------------------------------------------------------- damage


def _real_db_bytes(tmp_path: Path) -> bytes:
    src = Store(tmp_path / "src.duckdb")
    src.ingest(_bundle(n_samples=2000))
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
        lambda: store.ingest(_bundle()),
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
    store.ingest(_bundle())
    with _held(store.path, 1.5):
        t = time.monotonic()
        store.upsert_run({"run_id": "late", "status": "queued"})  # lock_timeout_s=5
        waited = time.monotonic() - t
    assert waited > 0.8
    assert store.run_ids() == {"r1", "late"}


def test_lock_held_too_long_raises_database_locked(store: Store) -> None:
    store.ingest(_bundle())
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
    store.ingest(_bundle("a", metrics={"amu": 0.5, "it": 1.0}))
    store.ingest(_bundle("b", metrics={"amu": 0.25}))

    out = tmp_path / "out" / "runs.json"
    assert store.export(out, "json") == 2
    doc = json.loads(out.read_text())
    assert [(r["run_id"], r["amu"], r["it"]) for r in doc] == [("a", 0.5, 1.0), ("b", 0.25, None)]

    assert store.export(tmp_path / "m.csv", "csv", run_ids=["b"], table="metrics") == 1
    csv = pa_csv.read_csv(tmp_path / "m.csv").to_pylist()
    assert csv == [{"run_id": "b", "name": "amu", "value": 0.25, "unit": None, "source": "runner"}]

    assert store.export(tmp_path / "s.parquet", "parquet", ["a"], table="samples") == 5
    assert pq.read_table(tmp_path / "s.parquet").to_pylist() == store.samples("a").to_pylist()

    store.export(tmp_path / "e.json", "json", ["a"], table="events")
    events = json.loads((tmp_path / "e.json").read_text())
    assert events[0]["payload"] == {"pid": 7}  # JSON columns stay JSON
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_rejects_bad_input(store: Store, tmp_path: Path) -> None:
    store.ingest(_bundle("a"))
    with pytest.raises(BadInput, match="unknown run id.*: nope, gone"):
        store.export(tmp_path / "x.json", "json", ["a", "nope", "gone"])
    with pytest.raises(BadInput, match="format"):
        store.export(tmp_path / "x.xml", "xml")
    with pytest.raises(BadInput, match="cannot export"):
        store.export(tmp_path / "x.json", "json", table="schema_meta")
    assert not (tmp_path / "x.json").exists()
