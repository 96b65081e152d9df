"""Which runs a report covers: a study's runs (by `runs.sweep_id`, a unique prefix ok) or a
list of run ids, read from the store with their metrics and, for training, their losses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from efficientllm_tui.errors import BadInput

if TYPE_CHECKING:  # the store's module loads duckdb; only its methods are used here
    from efficientllm_tui.store.db import Store

TRAINING = ("finetuning", "pretraining")
"""Families whose step rows carry a loss (the loss-curve chart)."""


def resolve_study(store: Store, study: str) -> str:
    """The one stored study (sweep) id equal to `study` or starting with it.

    Raises:
        BadInput: No database, no such study, or a prefix that names several.
    """
    if not study.strip():
        raise BadInput("--study needs an id (see `efficientllm sweep` / `efficientllm study`)")
    if not store.path.exists():
        raise BadInput(f"no database at {store.path}: nothing to report")
    rows = store.query("SELECT DISTINCT sweep_id FROM runs WHERE sweep_id IS NOT NULL "
                       "ORDER BY sweep_id").rows
    known = [str(r[0]) for r in rows]
    if study in known:
        return study
    hits = [k for k in known if k.startswith(study)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise BadInput(f"study prefix {study!r} is ambiguous: {', '.join(hits[:5])}"
                       + (" ..." if len(hits) > 5 else ""))
    listed = ", ".join(known[:5]) + (" ..." if len(known) > 5 else "")
    raise BadInput(f"no study {study!r} in {store.path}; "
                   + (f"known: {listed}" if known else "no run there was queued by a study"))


def study_run_ids(store: Store, study: str) -> list[str]:
    """The ids of every stored run the study queued, in id order."""
    rows = store.query("SELECT run_id FROM runs WHERE sweep_id = ? ORDER BY run_id",
                       params=[study]).rows
    return [str(r[0]) for r in rows]


def load_runs(store: Store, run_ids: list[str]) -> list[dict[str, Any]]:
    """`store.get_run` of each id, in order, with `curve`: [(step, loss)] for training runs.

    Raises:
        BadInput: An id that is not stored.
    """
    runs = []
    for rid in dict.fromkeys(run_ids):
        run = store.get_run(rid)
        if run is None:
            raise BadInput(f"run {rid} is not stored in {store.path}")
        run["curve"] = _curve(store, rid) if run.get("family") in TRAINING else []
        runs.append(run)
    return runs


def _curve(store: Store, run_id: str) -> list[tuple[int, float]]:
    """The run's (step, loss) pairs where a loss was recorded, in step order."""
    table = store.steps(run_id)
    steps, losses = table.column("step").to_pylist(), table.column("loss").to_pylist()
    pairs = [(int(s), float(v)) for s, v in zip(steps, losses, strict=True)
             if s is not None and v is not None and math.isfinite(v)]
    return sorted(pairs)


@dataclass(frozen=True)
class StudyCount:
    """One study (sweep) and how many of its runs are stored: what a study list shows, and
    what changes when one of its runs lands (a cheap test for rebuilding its report)."""

    study: str
    runs: int
    """Stored runs the study queued."""
    ok: int
    """Of them, runs that finished ok (the report's rows come from these)."""
    first_started: datetime | None
    last_ended: datetime | None
    metric_count: int
    """Stored metric values of its runs (grows when `efficientllm eval` scores a run)."""


def studies(store: Store) -> list[StudyCount]:
    """Every study with stored runs, the most recently ended first; none without a database."""
    if not store.path.exists():
        return []
    rows = store.query(
        "SELECT r.sweep_id, count(*), count(*) FILTER (WHERE r.status = 'ok'), "
        "min(r.started_at), max(r.ended_at), (SELECT count(*) FROM metrics m JOIN runs x "
        "USING (run_id) WHERE x.sweep_id = r.sweep_id) FROM runs r "
        "WHERE r.sweep_id IS NOT NULL GROUP BY r.sweep_id "
        "ORDER BY max(r.ended_at) DESC NULLS LAST, r.sweep_id").rows
    return [StudyCount(str(s), int(n), int(ok), t0, t1, int(m)) for s, n, ok, t0, t1, m in rows]
