"""The store's schema as text: the tables, views and migrations of the DuckDB file, and the
column names the rest of the app uses to talk about it.

No `duckdb` import here (efficientllm_tui.store.db is the only module with one): the migrations
run on a connection the store opens and passes in. The schema is versioned (`schema_meta`);
migrations run in one transaction on a write open, and a file written by a newer efficientllm
is refused rather than guessed at.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import StoreError
from profiling import metric_catalog

# --------------------------------------------------------------------------- constants

METRIC_DIRECTIONS: dict[str, bool] = metric_catalog.directions()
"""Leaderboard metrics and their direction: True when a higher value is better."""

RUN_METRIC_COLUMNS: tuple[str, ...] = metric_catalog.columns()
"""Metric names pivoted into columns of the `run_metrics` view (DESIGN.md section 6)."""

LIST_METRIC_COLUMNS: tuple[str, ...] = metric_catalog.listed()
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


# Schema version 2: why a number is missing, stored beside it (metrics.note, and the
# energy reader's reason on the run), so a NULL is never silent.
_V2_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"energy_note": "VARCHAR"},
    "metrics": {"note": "VARCHAR"},
}

# Schema version 4: the sweep or study a run was queued by (its id), so a study's report
# selects its runs from the database alone.
_V4_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"sweep_id": "VARCHAR"},
}

# Schema version 5: how many processes (one device each) the run trained on; NULL for runs
# stored before, which all ran on one (runners.distributed).
_V5_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"world_size": "INTEGER"},
}

COLUMNS: dict[str, dict[str, str]] = {
    t: {**_columns(spec), **_V2_COLUMNS.get(t, {}), **_V4_COLUMNS.get(t, {}),
        **_V5_COLUMNS.get(t, {})}
    for t, spec in _V1_TABLES.items()
}
"""Every table's columns (name -> DuckDB type) in the current schema version."""

FIRST_COLUMNS: dict[str, frozenset[str]] = {
    t: frozenset(_columns(spec)) for t, spec in _V1_TABLES.items()}
"""Every table's columns in schema version 1: what a copy of it from any version holds."""

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
    "leaderboard": "family, group_name, model, workload, metric, rank, run_id",
}
"""What `export` may write (table names never come from the user unchecked), and the order."""

EXPORT_FORMATS = ("json", "csv", "parquet")

_UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)
_MIGRATION_LOCK = threading.Lock()  # two threads of one process share a DuckDB instance

# --------------------------------------------------------------------------- views & migrations


QUALITY_METRICS = ("eval_ppl", "mcr", "quality")
"""Leaderboard metrics that measure quality: never ranked for inference or fine-tuning on
random weights (no quality signal; pretraining trained its model, so its perplexity is)."""


def workload_sql(r: str = "r") -> str:
    """SQL for a run's workload key, over the runs row aliased `r`.

    Runs are ranked only against runs of the same workload (DESIGN.md section 5): family,
    comparison group, model, weights, batch size, sequence length, new tokens (inference),
    the dtype everything is compared to (MCR's reference, or the training precision), the
    GPU's name (or cpu), simulated, contended, the devices of a multi-device run, the data a
    training run learned from (its loss and perplexity depend on it; the shipped default
    reads `shipped data`) and an inference run's task other than text decode (vqa,
    captioning). One readable string, so users and reports can GROUP BY it.
    """
    return f"""concat_ws(' | ', {r}.family, coalesce({r}.group_name, '-'), {r}.model,
  coalesce({r}.weights, 'unknown') || ' weights',
  'batch ' || coalesce(CAST({r}.batch_size AS VARCHAR), '?'),
  'seq ' || coalesce(CAST({r}.seq_len AS VARCHAR), '?'),
  CASE WHEN {r}.family = 'inference'
       THEN 'new ' || coalesce(CAST({r}.new_tokens AS VARCHAR), '?') END,
  coalesce('ref ' || ({r}.info->>'mcr_reference'), {r}.info->>'precision', 'dtype ?'),
  coalesce({r}.gpu_name, CASE WHEN {r}.device LIKE 'cuda%' THEN 'gpu (unnamed)'
                              ELSE 'cpu' END),
  CASE WHEN coalesce({r}.simulated, false) THEN 'simulated' ELSE 'measured' END,
  CASE WHEN {r}.contended THEN 'contended' WHEN NOT {r}.contended THEN 'alone'
       ELSE 'contention unknown' END,
  CASE WHEN coalesce({r}.world_size, 1) > 1
       THEN CAST({r}.world_size AS VARCHAR) || ' devices' END,
  CASE WHEN {r}.family <> 'inference'
       THEN 'data ' || coalesce({r}.dataset, 'shipped') END,
  CASE WHEN {r}.family = 'inference' AND coalesce({r}.info->>'task', 'text') <> 'text'
       THEN 'task ' || ({r}.info->>'task') END)"""


def _run_metrics_sql() -> str:
    """The run_metrics view: one row a run, the metrics pivoted by conditional aggregation."""
    pivot = ",\n  ".join(
        f"max(m.value) FILTER (WHERE m.name = '{n}') AS \"{n}\"" for n in RUN_METRIC_COLUMNS
    )
    keys = ("r.run_id, r.family, r.technique, r.model, r.group_name, r.status, r.simulated, "
            "r.weights, r.contended")
    return f"""
SELECT {keys}, r.started_at, {workload_sql()} AS workload,
  {pivot}
FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id
GROUP BY {keys}, r.started_at, workload"""


def leaderboard_sql(selected: bool = False) -> str:
    """The leaderboard query; `selected` adds a `?` parameter: a list of run ids to rank.

    Score is the paper's min-max normalisation to [0.1, 1] within one workload and metric
    (`workload_sql`): a batch-4 run is never ranked against batch-1 runs, an H100 run never
    against an H200 one, simulated or contended runs never against measured ones.
    Lower-is-better metrics flipped, 1.0 when every value is equal; rank 1 is best (ties
    share a rank). Not ranked: NULLs, quality on random weights (QUALITY_METRICS), and an
    energy of zero or less (a counter that did not advance, stored by older versions).
    """
    directions = ", ".join(f"('{k}', {str(v).lower()})" for k, v in METRIC_DIRECTIONS.items())
    quality = ", ".join(f"'{q}'" for q in QUALITY_METRICS)
    only = "\n    AND list_contains(?, r.run_id)" if selected else ""
    return f"""
WITH dirs(metric, higher_is_better) AS (VALUES {directions}),
vals AS (
  SELECT r.run_id, r.family, r.group_name, r.model, r.device, r.technique,
         {workload_sql()} AS workload,
         m.name AS metric, m.value, d.higher_is_better, coalesce(r.simulated, false) AS simulated
  FROM runs r JOIN metrics m ON m.run_id = r.run_id JOIN dirs d ON d.metric = m.name
  WHERE r.status = 'ok' AND m.value IS NOT NULL AND NOT isnan(m.value)
    AND NOT (m.name IN ({quality}) AND r.family <> 'pretraining'
             AND coalesce(r.weights, 'random') = 'random')
    AND NOT (m.name = 'aec_w' AND m.value <= 0){only}
),
bounds AS (
  SELECT *, min(value) OVER w AS lo, max(value) OVER w AS hi
  FROM vals WINDOW w AS (PARTITION BY workload, metric)
),
scored AS (
  SELECT *, CASE WHEN hi = lo THEN 1.0
                 WHEN higher_is_better THEN 0.1 + 0.9 * (value - lo) / (hi - lo)
                 ELSE 0.1 + 0.9 * (hi - value) / (hi - lo) END AS score
  FROM bounds
)
SELECT run_id, family, group_name, model, technique, metric, value, higher_is_better, score,
       rank() OVER (PARTITION BY workload, metric ORDER BY score DESC) AS rank,
       simulated, workload
FROM scored"""


def _migrate_to_1(con: Any) -> None:
    """Version 1: the tables of DESIGN.md section 5."""
    for table, spec in _V1_TABLES.items():
        con.execute(f"CREATE TABLE {table} ({spec})")


def _migrate_to_2(con: Any) -> None:
    """Version 2: `metrics.note` and `runs.energy_note` (why a value is NULL); the views
    rank within a workload. Rows stored before keep a NULL note."""
    for table, cols in _V2_COLUMNS.items():
        for name, typ in cols.items():
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")


def _migrate_to_3(con: Any) -> None:
    """Version 3: no table changes; `quality` (task accuracy) and `base_quality` become
    columns of `run_metrics` and `quality` a ranked metric of `leaderboard` (the views are
    recreated after every migration)."""


def _migrate_to_4(con: Any) -> None:
    """Version 4: `runs.sweep_id`, the sweep or study that queued the run (NULL for a run
    queued alone, and for runs stored before)."""
    for table, cols in _V4_COLUMNS.items():
        for name, typ in cols.items():
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")


def _migrate_to_5(con: Any) -> None:
    """Version 5: `runs.world_size`, the run's processes (one device each); the workload
    key names it when above 1, so a 2-GPU run is never ranked against one-GPU runs."""
    for table, cols in _V5_COLUMNS.items():
        for name, typ in cols.items():
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")


def _migrate_to_6(con: Any) -> None:
    """Version 6: no new column; the workload key (a view) names a training run's data and
    an inference run's task, so runs on other data or another task are never ranked
    together. Views are recreated after every migration."""


MIGRATIONS: list[Callable[[Any], None]] = [_migrate_to_1, _migrate_to_2, _migrate_to_3,
                                           _migrate_to_4, _migrate_to_5, _migrate_to_6]
"""MIGRATIONS[v] takes a database from schema version v to v + 1.

Views are derived, not migrated: they are recreated from the current code after every
migration, so a change to a view (or to METRIC_DIRECTIONS) ships as a new, possibly empty,
migration that bumps the version."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and understands."""


def schema_version(con: Any) -> int:
    """The schema version of the open database (0 for a file without `schema_meta`)."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'schema_meta'"
    ).fetchall()
    if not row[0][0]:
        return 0
    # fetchall, never fetchone: DuckDB 2 refuses new work while a result is unfinished.
    rows = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def too_new(path: Path, version: int) -> StoreError:
    """The error for a file whose schema `version` is newer than SCHEMA_VERSION."""
    return StoreError(
        f"database {path} has schema version {version}, newer than this efficientllm "
        f"understands ({SCHEMA_VERSION}); upgrade efficientllm (pip install -U "
        "efficientllm-tui) or pass --db with another path",
        "Database too new",
    )


def migrate(con: Any, path: Path) -> None:
    """Bring the open (read-write) database to SCHEMA_VERSION in one transaction.

    Raises:
        StoreError: The file's schema is newer than this code understands.
    """
    with _MIGRATION_LOCK:
        con.execute("BEGIN TRANSACTION")
        try:
            version = schema_version(con)
            if version > SCHEMA_VERSION:
                raise too_new(path, version)
            if version < SCHEMA_VERSION:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_meta "
                    "(key VARCHAR PRIMARY KEY, value VARCHAR)"
                )
                for migration in MIGRATIONS[version:]:
                    migration(con)
                con.execute("CREATE OR REPLACE VIEW run_metrics AS" + _run_metrics_sql())
                con.execute("CREATE OR REPLACE VIEW leaderboard AS" + leaderboard_sql())
                con.execute(
                    "INSERT OR REPLACE INTO schema_meta VALUES "
                    "('schema_version', ?), ('migrated_at', ?)",
                    [str(SCHEMA_VERSION), datetime.now(_UTC).isoformat()],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

