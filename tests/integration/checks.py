"""Checks shared by the runner and CLI tests: a stored number against what it derives from.

Every metric is compared with the value recomputed from the run's own step events, windows
or samples (never just "not None"), and every NULL must carry source `none` and its reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from profiling import metric_catalog
from profiling import metrics as pm
from profiling.backends.energy import energy_counter
from runners.protocol import Metric

LATENCY = ("al_s", "al_p50_s", "al_p90_s", "al_p99_s")
STATS = ("mean", "p50", "p90", "p99")


def by_name(metrics: Iterable[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


def nulls_explained(metrics: Iterable[Metric]) -> None:
    """Every None value has source `none` and a note; every value a real source; every
    metric is in the one metric catalog, with the catalog's unit."""
    for m in metrics:
        known = metric_catalog.info(m.name)
        assert known is not None, f"{m.name} is missing from profiling.metric_catalog"
        assert m.unit == known.unit, (m.name, m.unit, known.unit)
        if m.value is None:
            assert m.source == "none" and isinstance(m.note, str) and m.note.strip(), m
        else:
            assert m.source != "none", m


def latency_matches(got: Mapping[str, Metric], latencies_s: Sequence[float],
                    names: Sequence[str] = LATENCY) -> None:
    """The mean and percentiles named `names` equal those of `latencies_s`."""
    assert latencies_s, "no measured steps"
    stats = pm.latency_stats(list(latencies_s))
    for name, key in zip(names, STATS, strict=True):
        assert got[name].value == pytest.approx(stats[key], rel=1e-12), name
    assert min(latencies_s) <= got[names[0]].value <= max(latencies_s)


def energy_matches(got: Mapping[str, Metric], window: Mapping[str, Any], tokens: int,
                   energy: str = "energy_j", aec: str | None = "aec_w",
                   per_token: str = "j_per_token") -> None:
    """Energy metrics against the window they come from: the window's joules, its mean
    power and joules per token, or all NULL with the window's energy note (on a CPU
    without RAPL: the counter's own reason)."""
    names = [n for n in (energy, aec, per_token) if n is not None]
    joules = window.get("energy_j")
    if joules is None:
        note = window.get("energy_note")
        assert isinstance(note, str) and note
        if window.get("device") == "cpu" and energy_counter("cpu").reader is None:
            assert note == energy_counter("cpu").note
            assert note.startswith("no CPU energy counter: ")
        for name in names:
            assert (got[name].value, got[name].source, got[name].note) == (None, "none", note)
        return
    assert joules > 0
    source = window.get("energy_source")
    assert got[energy].value == joules and got[energy].source == source
    if aec is not None:
        seconds = (window["t1_ns"] - window["t0_ns"]) / 1e9
        assert got[aec].value == pytest.approx(joules / seconds)
    assert got[per_token].value == pytest.approx(joules / tokens)
