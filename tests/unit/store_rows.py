"""Rows for the store's tests (tests/unit/test_store*.py): samples, metrics, a whole run
bundle with every table filled, row counts, and the `store` fixture's database."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from profiling.sample import Sample

T0 = 1_800_000_000_000_000_000  # ns
UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)
TABLES = ("runs", "samples", "steps", "windows", "events", "metrics")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty store in a folder that does not exist yet (the first write makes it)."""
    return Store(tmp_path / "db" / "efficientllm.duckdb", lock_timeout_s=5)


def make_samples(n: int, device: str = "gpu0") -> list[Sample]:
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


def make_metric(name: str, value: float | None, unit: str = "", source: str = "runner") -> dict:
    return {"name": name, "value": value, "unit": unit, "source": source}


def make_bundle(
    run_id: str = "r1",
    *,
    model: str = "tiny",
    status: str = "ok",
    metrics: dict[str, float] | None = None,
    samples: object = None,
    n_samples: int = 5,
    **run: object,
) -> RunBundle:
    """A run with samples, steps, a window, events and `metrics`; `run` overrides columns
    of its runs row (weights, batch_size, gpu_name, contended, ...)."""
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
            **run,
        },
        samples=make_samples(n_samples) if samples is None else samples,  # type: ignore[arg-type]
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
        metrics=[make_metric(k, v) for k, v in (metrics or {"amu": 0.25, "it": 42.0}).items()],
    )


def count_rows(store: Store) -> dict[str, int]:
    return store.stats()["rows"]


def version_1_file(path: Path, *, metrics: bool = False) -> Path:
    """A database as schema version 1 wrote it, with one run `old` (and its `al_s` metric)."""
    import duckdb

    from efficientllm_tui.store.schema import MIGRATIONS

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    MIGRATIONS[0](con)
    con.execute("INSERT INTO schema_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO runs (run_id, status) VALUES ('old', 'ok')")
    if metrics:
        con.execute("INSERT INTO metrics VALUES ('old', 'al_s', 0.5, 's', 'runner')")
    con.close()
    return path
