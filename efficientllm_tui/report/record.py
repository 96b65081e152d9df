"""The report's records: what `build_report` computes and every writer (HTML, Markdown,
charts, `--json`) reads, so the numbers are computed once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MARKS: dict[str, str] = {
    "S": "simulated GPU: AMU, PCU and energy are not hardware measurements",
    "R": "random weights: cost is real, quality has no signal (not ranked)",
    "C": "contended: another process shared the GPU during the run",
}
"""Marker letter -> what it means: put beside every number of such a run, and in the legend."""


@dataclass(frozen=True)
class Stat:
    """One metric over the repeats of one row: median and spread of the known values."""

    median: float | None
    """Median of the repeats' values; None when no repeat has one."""
    lo: float | None
    """Smallest value (the spread's low end)."""
    hi: float | None
    """Largest value (the spread's high end)."""
    n: int
    """Repeats that have a value."""
    unit: str | None
    """The unit the runs stored."""
    note: str | None = None
    """Why the value is missing (the first repeat's stored note), when it is."""


@dataclass(frozen=True)
class PaperCell:
    """The paper's rank of a row's method for one metric."""

    rank: int
    group: str
    """The paper's group it comes from (`attention`, `7B-8B`, ...)."""
    nearest: bool
    """The run's model size lies outside that group's range (the nearest group was used)."""


@dataclass(frozen=True)
class Row:
    """One technique configuration within one workload; its runs differ only by seed."""

    label: str
    """The technique, with its non-default parameters when the workload has several."""
    technique: str
    run_ids: tuple[str, ...]
    seeds: tuple[int | None, ...]
    marks: tuple[str, ...]
    """MARKS letters that apply to every number of this row."""
    stats: dict[str, Stat]
    """Metric name -> its median and spread."""
    scores: dict[str, float]
    """Ranked metric -> the paper's min-max score in [0.1, 1] of the median (1 = best)."""
    ranks: dict[str, int]
    """Ranked metric -> our rank within the workload (1 = best, ties share a rank)."""
    paper: dict[str, PaperCell]
    """Ranked metric -> the paper's rank, where the paper ranks this method."""


@dataclass(frozen=True)
class Tau:
    """Kendall tau between our ranks and the paper's for one metric (or `all` metrics)."""

    metric: str
    n: int
    """Rows with both ranks."""
    tau: float | None
    p_value: float | None
    note: str | None = None
    """Why tau is None (fewer than 3 pairs, every rank tied)."""


@dataclass(frozen=True)
class Curve:
    """A training run's loss over its steps (for the loss chart)."""

    run_id: str
    label: str
    steps: tuple[int, ...]
    loss: tuple[float, ...]


@dataclass(frozen=True)
class Workload:
    """The rows of one workload: ranked against each other and nothing else."""

    tag: str
    """`W1`, `W2`, ...: how tables and charts refer to it."""
    key: str
    """The workload key (store.schema.workload_sql)."""
    family: str
    group: str
    model: str
    metrics: tuple[str, ...]
    """The family's headline metrics that any row has, in catalog order."""
    rows: tuple[Row, ...]
    taus: tuple[Tau, ...]
    """Per ranked metric, then `all` (the metrics' rank pairs pooled)."""
    marks: tuple[str, ...]
    """MARKS letters of any of its rows."""
    curves: tuple[Curve, ...] = ()
    extra: dict[str, dict[str, Stat]] = field(default_factory=dict)
    """Row label -> latency percentiles (al_p50_s, al_p90_s, al_p99_s) for inference."""


@dataclass(frozen=True)
class Section:
    """One comparison group of one family (`pretraining` / `attention`)."""

    family: str
    group: str
    title: str
    workloads: tuple[Workload, ...]


@dataclass(frozen=True)
class Skipped:
    """A selected run left out of the tables, and why."""

    run_id: str
    status: str | None
    reason: str


@dataclass(frozen=True)
class Report:
    """A whole report: where its runs came from and the sections."""

    study: str | None
    """The study (sweep) id the runs were selected by; None for a list of run ids."""
    run_count: int
    """Runs in the tables (ok runs)."""
    sections: tuple[Section, ...]
    skipped: tuple[Skipped, ...] = ()
    started: str | None = None
    """The first run's start (ISO, UTC)."""
    ended: str | None = None
    """The last run's end (ISO, UTC)."""
    devices: tuple[str, ...] = ()
    """GPU names (or cpu) the runs ran on."""

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (`report --json`)."""
        return asdict(self)
