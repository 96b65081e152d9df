"""Build a report from stored runs: group them by the paper's groups and by workload (never
rank across workloads), fold repeats (runs differing only by seed) into median and spread,
score and rank the medians, and set the paper's ranks and Kendall tau beside ours."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from efficientllm_tui import paper
from efficientllm_tui.errors import BadInput
from efficientllm_tui.matrix import FAMILY_ORDER, GROUP_TITLES
from efficientllm_tui.report import score, select
from efficientllm_tui.report.record import (
    Curve,
    PaperCell,
    Report,
    Row,
    Section,
    Skipped,
    Stat,
    Tau,
    Workload,
)
from efficientllm_tui.report.tau import kendall
from efficientllm_tui.store.schema import METRIC_DIRECTIONS, QUALITY_METRICS
from profiling import metric_catalog

if TYPE_CHECKING:
    from efficientllm_tui.store.db import Store

PERCENTILES = ("al_p50_s", "al_p90_s", "al_p99_s")
"""Latency percentiles charted for inference workloads."""

_NOT_REPEAT_KEYS = ("seed",)
"""Parameters that make a run a repeat rather than another configuration."""


def build_report(store: Store, *, study: str | None = None,
                 run_ids: Sequence[str] | None = None) -> Report:
    """The report over a study's runs or the given (already resolved) run ids.

    Raises:
        BadInput: Neither or both of study and run_ids, an unknown study or run, an empty
            study, or no run that finished ok.
    """
    if study is not None and run_ids:
        raise BadInput("give --study ID or RUN_IDs, not both")
    if study is None and not run_ids:
        raise BadInput("no runs selected: give --study ID or one or more RUN_IDs")
    if study is not None:
        study = select.resolve_study(store, study)
        ids = select.study_run_ids(store, study)
        if not ids:
            raise BadInput(f"study {study} has no stored runs yet")
    else:
        ids = list(run_ids or ())
    runs = select.load_runs(store, ids)
    ok = [r for r in runs if r.get("status") == "ok"]
    skipped = tuple(Skipped(str(r["run_id"]), r.get("status"),
                            str(r.get("error_text") or f"status {r.get('status')}"))
                    for r in runs if r.get("status") != "ok")
    if not ok:
        statuses = ", ".join(sorted({str(r.get("status")) for r in runs}))
        raise BadInput(f"none of the {len(runs)} selected run(s) finished ok ({statuses}): "
                       "nothing to report")
    return Report(study=study, run_count=len(ok), sections=sections(ok), skipped=skipped,
                  started=_iso(min(_times(ok, "started_at"), default=None)),
                  ended=_iso(max(_times(ok, "ended_at"), default=None)),
                  devices=tuple(sorted({_device(r) for r in ok})))


def sections(runs: Sequence[Mapping[str, Any]]) -> tuple[Section, ...]:
    """The runs grouped by family and group, then by workload (tagged W1, W2, ... in order)."""
    by_group: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for r in runs:
        key = (str(r.get("family")), str(r.get("group_name") or "-"))
        by_group.setdefault(key, {}).setdefault(str(r.get("workload")), []).append(r)
    order = sorted(by_group, key=lambda k: (_family_order(k[0]), k))
    out, n = [], 0
    for family, group in order:
        workloads = []
        for wkey in sorted(by_group[(family, group)]):
            n += 1
            workloads.append(workload(f"W{n}", wkey, by_group[(family, group)][wkey]))
        title = f"{family} / {GROUP_TITLES.get(group, group)}"
        out.append(Section(family, group, title, tuple(workloads)))
    return tuple(out)


def workload(tag: str, key: str, runs: Sequence[Mapping[str, Any]]) -> Workload:
    """One workload's rows (repeats folded), scores, ranks, the paper's ranks and tau."""
    family, group = str(runs[0].get("family")), str(runs[0].get("group_name") or "-")
    model = str(runs[0].get("model"))
    repeats = _repeats(runs)
    labels = _labels(repeats)
    present = {n for r in runs for n in (r.get("metrics") or {})}
    metrics = tuple(n for n in metric_catalog.headline(family) if n in present)
    stats = {label: {m: _stat(rs, m) for m in metrics} for label, rs in zip(labels, repeats,
                                                                              strict=True)}
    scores: dict[str, dict[str, float]] = {label: {} for label in labels}
    ranks: dict[str, dict[str, int]] = {label: {} for label in labels}
    for m in metrics:
        if not _ranked(m, family, runs):
            continue
        medians = {lb: s[m].median for lb, s in stats.items() if s[m].median is not None}
        got = score.minmax_scores(medians, METRIC_DIRECTIONS[m])  # type: ignore[arg-type]
        for lb, rank in score.ranks(got).items():
            scores[lb][m], ranks[lb][m] = got[lb], rank
    rows = []
    for label, rs in zip(labels, repeats, strict=True):
        technique = str(rs[0].get("technique"))
        cells = {}
        for m in ranks[label]:
            pr = paper.paper_rank(family, group, technique, model, m)
            if pr is not None:
                cells[m] = PaperCell(pr.rank, pr.group, pr.nearest)
        rows.append(Row(label, technique, tuple(str(r["run_id"]) for r in rs),
                        tuple(r.get("seed") for r in rs), marks_of(rs), stats[label],
                        scores[label], ranks[label], cells))
    extra = {}
    if family == "inference":
        extra = {lb: {p: _stat(rs, p) for p in PERCENTILES}
                 for lb, rs in zip(labels, repeats, strict=True)}
    curves = tuple(Curve(str(r["run_id"]), lb, tuple(s for s, _ in r["curve"]),
                         tuple(v for _, v in r["curve"]))
                   for lb, rs in zip(labels, repeats, strict=True) for r in rs
                   if r.get("curve"))
    all_marks = tuple(sorted({m for row in rows for m in row.marks}))
    return Workload(tag, key, family, group, model, metrics, tuple(rows), taus(rows, metrics),
                    all_marks, curves, extra)


def taus(rows: Sequence[Row], metrics: Sequence[str]) -> tuple[Tau, ...]:
    """Kendall tau of our ranks against the paper's for each ranked metric, then `all`
    (every metric's pairs pooled)."""
    out, ours_all, paper_all = [], [], []
    for m in metrics:
        pairs = [(r.ranks[m], r.paper[m].rank) for r in rows if m in r.ranks and m in r.paper]
        if not any(m in r.ranks for r in rows):
            continue
        out.append(kendall(m, [a for a, _ in pairs], [b for _, b in pairs]))
        ours_all += [a for a, _ in pairs]
        paper_all += [b for _, b in pairs]
    out.append(kendall("all", ours_all, paper_all))
    return tuple(out)


def marks_of(runs: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """MARKS letters for numbers from these runs: S simulated, R random weights, C contended.

    Pretraining starts from a random init by design: its trained loss and perplexity are
    the measurement, so its runs are never marked R."""
    got = set()
    for r in runs:
        sources = {v[2] for v in (r.get("metrics") or {}).values() if len(v) > 2}
        if r.get("simulated") or "simulated" in sources:
            got.add("S")
        if r.get("weights") == "random" and r.get("family") != "pretraining":
            got.add("R")
        if r.get("contended") is True:
            got.add("C")
    return tuple(m for m in "SRC" if m in got)


def _ranked(metric: str, family: str, runs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the leaderboard ranks this metric here: quality on random weights has no
    signal outside pretraining (store.schema.QUALITY_METRICS)."""
    if metric not in METRIC_DIRECTIONS:
        return False
    random = any((r.get("weights") or "random") == "random" for r in runs)
    return not (metric in QUALITY_METRICS and family != "pretraining" and random)


def _value(run: Mapping[str, Any], metric: str) -> float | None:
    """A run's finite value of `metric`; an energy of zero or less (a counter that did not
    advance) counts as missing, as on the leaderboard."""
    entry = (run.get("metrics") or {}).get(metric)
    v = entry[0] if entry else None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    if metric == "aec_w" and v <= 0:
        return None
    return float(v)


def _stat(runs: Sequence[Mapping[str, Any]], metric: str) -> Stat:
    """Median, min, max and count of a metric over repeats, with the unit and a note."""
    values = [v for r in runs if (v := _value(r, metric)) is not None]
    units = [e[1] for r in runs if (e := (r.get("metrics") or {}).get(metric)) and e[1]]
    notes = [n for r in runs if (n := (r.get("metric_notes") or {}).get(metric))]
    if not values:
        return Stat(None, None, None, 0, units[0] if units else None,
                    notes[0] if notes else "not stored")
    return Stat(statistics.median(values), min(values), max(values), len(values),
                units[0] if units else None)


def _repeat_key(run: Mapping[str, Any]) -> str:
    """What must be equal for two runs to be repeats: technique, parameters (seed aside),
    steps, warm-up and dataset (the workload key holds the rest)."""
    params = run.get("params") if isinstance(run.get("params"), Mapping) else {}
    kept = {k: v for k, v in (params or {}).items() if k not in _NOT_REPEAT_KEYS}
    return json.dumps([run.get("technique"), kept, run.get("steps"), run.get("warmup"),
                       run.get("dataset")], sort_keys=True, default=str)


def _repeats(runs: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The runs folded into repeat sets, ordered by technique then configuration."""
    sets: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: str(r.get("run_id"))):
        sets.setdefault(_repeat_key(r), []).append(r)
    return [sets[k] for k in sorted(sets)]


def _labels(repeats: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Row labels: the technique, plus its parameters and steps when it has several rows."""
    techniques = [str(rs[0].get("technique")) for rs in repeats]
    out = []
    for t, rs in zip(techniques, repeats, strict=True):
        label = t
        if techniques.count(t) > 1:
            params = rs[0].get("params") if isinstance(rs[0].get("params"), Mapping) else {}
            bits = [f"{k}={v}" for k, v in sorted((params or {}).items())
                    if k not in _NOT_REPEAT_KEYS]
            bits += [f"steps={rs[0].get('steps')}"] if rs[0].get("steps") is not None else []
            label = f"{t} ({', '.join(bits)})" if bits else t
        while label in out:  # configurations alike in everything shown stay apart
            label += "'"
        out.append(label)
    return out


def _family_order(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def _times(runs: Iterable[Mapping[str, Any]], column: str) -> list[datetime]:
    return [t for r in runs if isinstance(t := r.get(column), datetime)]


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


def _device(run: Mapping[str, Any]) -> str:
    name = run.get("gpu_name") or run.get("device") or "unknown device"
    return f"{name} (simulated)" if run.get("simulated") else str(name)
