"""The DuckDB store: schema and migrations, ingest, deletes, run listing and the views
(queries, errors, locking and export: test_store_access.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from efficientllm_tui.errors import (
    BadInput,
    CorruptDatabase,
    StoreError,
)
from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from efficientllm_tui.store.schema import (
    COLUMNS,
    METRIC_DIRECTIONS,
    RUN_METRIC_COLUMNS,
    SCHEMA_VERSION,
)
from profiling.sample import FIELD_NAMES
from tests.unit import store_rows
from tests.unit.store_rows import (
    T0,
    TABLES,
    UTC,
    count_rows,
    make_bundle,
    make_metric,
    make_samples,
)

store = store_rows.store  # a fixture, used by name


# ----------------------------------------------------------------------------- schema


def test_migration_creates_schema_and_version(store: Store) -> None:
    assert not store.path.parent.exists()
    with store.connect():
        pass
    stats = store.stats()
    assert stats["schema_version"] == SCHEMA_VERSION == 6
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
    store.ingest(make_bundle())
    with store.connect() as con:
        con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    for call in (store.check, store.list_runs, lambda: store.upsert_run({"run_id": "x"})):
        with pytest.raises(StoreError, match="upgrade efficientllm") as info:
            call()
        assert not isinstance(info.value, CorruptDatabase)


# ----------------------------------------------------------------------------- ingest


def test_ingest_round_trip(store: Store) -> None:
    store.ingest(make_bundle(n_samples=5))
    assert count_rows(store) == {
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
    assert table.to_pylist()[2] == {"run_id": "r1", **make_samples(5)[2].to_dict()}
    assert store.samples("r1", device="cpu").num_rows == 0

    steps = store.steps("r1").to_pylist()
    assert [s["latency_s"] for s in steps] == [0.5, 1.5, 2.5]
    assert json.loads(steps[0]["extra"]) == {"decode_s": 0.1}  # unknown keys kept
    assert store.windows("r1") == make_bundle().windows
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
    store.ingest(make_bundle(samples=table))
    rows = store.samples("r1").to_pylist()
    assert [(r["t_ns"], r["rss_bytes"], r["power_w"]) for r in rows] == [
        (1, 20, None),
        (2, 10, None),
    ]
    with pytest.raises(BadInput, match="unknown column"):
        store.ingest(make_bundle(samples=table.append_column("bogus", pa.array([1, 2]))))


def test_ingest_is_idempotent(store: Store) -> None:
    store.ingest(make_bundle(n_samples=5))
    first = count_rows(store)
    store.ingest(make_bundle(n_samples=5))
    assert count_rows(store) == first
    store.ingest(make_bundle(n_samples=2, metrics={"amu": 0.5}))  # a re-ingest replaces
    assert count_rows(store)["samples"] == 2
    assert store.get_run("r1")["metrics"] == {"amu": (0.5, "", "runner")}  # type: ignore[index]


def test_ingest_rejects_bad_rows_and_writes_nothing(store: Store) -> None:
    with pytest.raises(BadInput, match="unknown run column"):
        store.ingest(RunBundle(run={"run_id": "x", "nope": 1}))
    with pytest.raises(BadInput, match="unknown status"):
        store.ingest(RunBundle(run={"run_id": "x", "status": "done"}))
    with pytest.raises(BadInput, match="duplicate metric"):
        store.ingest(
            RunBundle(run={"run_id": "x"}, metrics=[make_metric("amu", 1), make_metric("amu", 2)])
        )
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
    store.ingest(make_bundle("a"))
    store.ingest(make_bundle("b"))
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
        b = make_bundle(f"r{i}", model=model, metrics={"amu": 0.1 * (3 - i), "it": 10.0 * i})
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
        make_bundle(
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
        "weights",
        "contended",
        "started_at",
        "workload",
        *RUN_METRIC_COLUMNS,
    ]
    a, empty = (dict(zip(res.columns, row, strict=True)) for row in res.rows)
    assert (a["amu"], a["pcu"], a["al_s"], a["eval_ppl"], a["it"]) == (0.5, 0.8, 0.02, 12.5, None)
    assert empty["status"] == "queued" and all(empty[m] is None for m in RUN_METRIC_COLUMNS)


def test_leaderboard_scores_and_ranks(store: Store) -> None:
    # al_s is lower-is-better, it higher-is-better, mcr is equal everywhere (max = min).
    values = {"r1": (1.0, 10.0), "r2": (2.0, 40.0), "r3": (3.0, 20.0)}
    for rid, (al, it) in values.items():
        store.ingest(make_bundle(rid, weights="real",
                                 metrics={"al_s": al, "it": it, "mcr": 2.0, "amu_gib": 1.0}))
    store.ingest(make_bundle("failed", status="failed", metrics={"al_s": 0.1}))  # not ranked
    store.ingest(make_bundle("other", model="smollm2-135m", metrics={"al_s": 9.0}))  # own group

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


def _workload_ranks(store: Store, metric: str) -> dict[str, tuple[int, str]]:
    return {b["run_id"]: (b["rank"], b["workload"]) for b in store.leaderboard()
            if b["metric"] == metric}


def test_leaderboard_ranks_only_within_one_workload(store: Store) -> None:
    # A batch-4 run would beat batch-1 runs on IT; an H200 run would beat an H100 one; a
    # contended or simulated run would be ranked against clean measured ones. None is.
    common = dict(weights="real", gpu_name="NVIDIA H100 80GB HBM3", contended=False,
                  simulated=False)
    store.ingest(make_bundle("b1-slow", metrics={"it": 10.0}, **common))
    store.ingest(make_bundle("b1-fast", metrics={"it": 20.0}, **common))
    store.ingest(make_bundle("b4", metrics={"it": 70.0}, **{**common, "batch_size": 4}))
    store.ingest(make_bundle("h200", metrics={"it": 90.0},
                             **{**common, "gpu_name": "NVIDIA H200"}))
    store.ingest(make_bundle("shared", metrics={"it": 99.0}, **{**common, "contended": True}))
    store.ingest(make_bundle("sim", metrics={"it": 95.0}, **{**common, "simulated": True}))
    ranks = _workload_ranks(store, "it")
    assert {r: rank for r, (rank, _) in ranks.items()} == {
        "b1-slow": 2, "b1-fast": 1, "b4": 1, "h200": 1, "shared": 1, "sim": 1}
    workloads = {r: w for r, (_, w) in ranks.items()}
    assert workloads["b1-slow"] == workloads["b1-fast"] == (
        "inference | bit_width | tiny | real weights | batch 1 | seq ? | new ? | dtype ? | "
        "NVIDIA H100 80GB HBM3 | measured | alone")
    assert len(set(workloads.values())) == 5
    assert "batch 4" in workloads["b4"] and "NVIDIA H200" in workloads["h200"]
    assert workloads["shared"].endswith("| contended")
    assert "| simulated |" in workloads["sim"]
    # the key is readable from SQL as well, for reports and users
    rows = store.query("SELECT run_id, workload FROM run_metrics ORDER BY run_id").rows
    assert dict(rows) == workloads


def test_workload_names_training_data_and_inference_task(store: Store) -> None:
    # pretraining on the shipped 14 KB text and on the pydoc corpus learn different things:
    # their loss and perplexity are never ranked together; nor are vqa and captioning runs
    train = dict(family="pretraining", technique="gqa", group_name="attention",
                 weights="random", simulated=False, contended=False)
    store.ingest(make_bundle("shipped", metrics={"al_s": 1.0}, **train))
    store.ingest(make_bundle("pydoc", metrics={"al_s": 2.0}, **train, dataset="pydoc"))
    vlm = dict(model="tiny-vlm", simulated=False, contended=False)
    store.ingest(make_bundle("vqa", metrics={"al_s": 1.0}, **vlm,
                             info=json.dumps({"task": "vqa"})))
    store.ingest(make_bundle("cap", metrics={"al_s": 2.0}, **vlm,
                             info=json.dumps({"task": "captioning"})))
    store.ingest(make_bundle("text", metrics={"al_s": 3.0}, **vlm))
    ranks = _workload_ranks(store, "al_s")
    assert {r: rank for r, (rank, _) in ranks.items()} == {
        "shipped": 1, "pydoc": 1, "vqa": 1, "cap": 1, "text": 1}
    workloads = {r: w for r, (_, w) in ranks.items()}
    assert workloads["shipped"].endswith("| alone | data shipped")
    assert workloads["pydoc"].endswith("| alone | data pydoc")
    assert workloads["vqa"].endswith("| alone | task vqa")
    assert workloads["cap"].endswith("| alone | task captioning")
    assert workloads["text"].endswith("| measured | alone")  # text decode: no task part


def test_quality_on_random_weights_and_zero_energy_are_never_ranked(store: Store) -> None:
    store.ingest(make_bundle("rand", weights="random", metrics={"mcr": 3.74, "eval_ppl": 1e4,
                                                                "aec_w": 0.0, "al_s": 1.0}))
    store.ingest(make_bundle("rand2", weights="random", metrics={"mcr": 1.0, "al_s": 2.0,
                                                                 "aec_w": 50.0}))
    board = {(b["run_id"], b["metric"]) for b in store.leaderboard()}
    assert board == {("rand", "al_s"), ("rand2", "al_s"), ("rand2", "aec_w")}
    pre = make_bundle("pre", weights="random", metrics={"eval_ppl": 40.0})
    store.ingest(RunBundle(run={**pre.run, "family": "pretraining", "group_name": "attention"},
                           samples=pre.samples, steps=pre.steps, windows=pre.windows,
                           events=pre.events, metrics=pre.metrics))
    # a pretrained model's perplexity is a real quality signal, random init or not
    assert ("pre", "eval_ppl") in {(b["run_id"], b["metric"]) for b in store.leaderboard()}


def test_a_version_1_file_migrates_keeping_its_rows(tmp_path: Path) -> None:
    from tests.unit.store_rows import version_1_file

    path = version_1_file(tmp_path / "v1.duckdb", metrics=True)
    store = Store(path)
    got = store.get_run("old")
    assert got is not None and got["metrics"] == {"al_s": (0.5, "s", "runner")}
    assert got["metric_notes"] == {} and got["energy_note"] is None
    assert store.stats()["schema_version"] == SCHEMA_VERSION


def test_a_version_2_file_gains_ranked_task_quality(tmp_path: Path) -> None:
    """Schema 3 recreates the views: a `quality` stored by a version-2 writer becomes a
    run_metrics column and a ranked (higher is better) leaderboard metric."""
    import duckdb

    from efficientllm_tui.store.schema import MIGRATIONS

    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    MIGRATIONS[0](con)
    MIGRATIONS[1](con)
    con.execute("INSERT INTO schema_meta VALUES ('schema_version', '2')")
    for run_id, quality in (("a", 0.6), ("b", 0.3)):
        con.execute("INSERT INTO runs (run_id, family, model, weights, status) VALUES "
                    "(?, 'inference', 'smollm2-135m', 'real', 'ok')", [run_id])
        con.execute("INSERT INTO metrics VALUES (?, 'quality', ?, 'fraction', 'lm-eval', NULL)",
                    [run_id, quality])
    con.close()
    store = Store(path)
    rows = store.query("SELECT run_id, quality, base_quality FROM run_metrics ORDER BY run_id")
    assert [tuple(r) for r in rows.rows] == [("a", 0.6, None), ("b", 0.3, None)]
    ranks = {(b["run_id"], b["rank"]) for b in store.leaderboard() if b["metric"] == "quality"}
    assert ranks == {("a", 1), ("b", 2)}
    assert store.stats()["schema_version"] == SCHEMA_VERSION


def test_metric_directions_follow_the_paper() -> None:
    lower = {m for m, higher in METRIC_DIRECTIONS.items() if not higher}
    assert lower == {"amu", "al_s", "aec_w", "eval_ppl", "loss"}
    assert set(METRIC_DIRECTIONS) - lower == {"pcu", "tt", "st", "it", "mcr", "quality"}


def test_a_rescore_is_attached_once_and_keeps_the_cost(store: Store) -> None:
    """`efficientllm eval` results: metrics of the same name replaced, others kept, one
    `eval` event and its windows per eval id however often it is stored, info merged."""
    store.ingest(make_bundle("r1", metrics={"it": 42.0, "quality": 0.3}, info='{"a": 1}'))
    scores = [{"name": "quality", "value": 0.5, "unit": "fraction", "source": "lm-eval"},
              {"name": "acc_x", "value": 0.5, "unit": "fraction", "source": "lm-eval"}]
    windows = [{"name": "quality", "device": "cpu", "t0_ns": 1, "t1_ns": 2, "energy_j": None,
                "energy_source": None}]
    event = {"t_ns": 3, "payload": {"eval_id": "e1", "status": "ok"}}
    info = {"evals": [{"eval_id": "e1"}], "quality_tasks": {"x": {"acc": 0.5}}}
    for _ in range(2):
        store.attach_scores("r1", scores, windows, event, info)
    got = store.get_run("r1")
    assert got is not None
    assert got["metrics"]["quality"] == (0.5, "fraction", "lm-eval")
    assert got["metrics"]["acc_x"][0] == 0.5 and got["metrics"]["it"][0] == 42.0
    assert got["info"] == {"a": 1, "evals": [{"eval_id": "e1"}],
                           "quality_tasks": {"x": {"acc": 0.5}}}
    rows = store.query("SELECT kind, count(*) FROM events WHERE run_id = 'r1' "
                       "AND kind = 'eval' GROUP BY kind").rows
    assert [tuple(r) for r in rows] == [("eval", 1)]
    rows = store.query("SELECT name FROM windows WHERE run_id = 'r1' AND name LIKE 'eval %'").rows
    assert [tuple(r) for r in rows] == [("eval e1: quality",)]
    # a later eval that could not score (lm-eval gone) keeps the stored scores, adds its notes
    failed = [{"name": "quality", "value": None, "unit": "fraction", "source": "none",
               "note": "unsupported: lm-eval is not installed"},
              {"name": "acc_y", "value": None, "unit": "fraction", "source": "none",
               "note": "unsupported: lm-eval is not installed"}]
    store.attach_scores("r1", failed, [], {"t_ns": 4, "payload": {"eval_id": "e2"}},
                        {"evals": [{"eval_id": "e2"}]})
    got = store.get_run("r1")
    assert got is not None and got["metrics"]["quality"] == (0.5, "fraction", "lm-eval")
    assert got["metrics"]["acc_y"][0] is None
    assert got["metric_notes"]["acc_y"] == "unsupported: lm-eval is not installed"
    assert [e["eval_id"] for e in got["info"]["evals"]] == ["e1", "e2"]
    with pytest.raises(BadInput, match="no run 'gone' is stored"):
        store.attach_scores("gone", scores, windows, event, info)
