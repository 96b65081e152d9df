"""Turn a run dir (+ the daemon's spooled samples) into one idempotent store transaction.

Why here and not in the runner: the runner knows its own steps and energy windows, but
memory and compute activity come from the profiling daemon's samples, which only meet the
run's events at ingest. Ingest reads everything from files (run dir, spool), so a killed
launcher or a locked database loses nothing: `recover` can always do it again later.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import fold, queue, rundir
from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from profiling import home as homes
from profiling import metrics as pm
from profiling.daemon import spool
from profiling.sample import Sample
from runners import errors as runner_errors
from runners.models import catalog
from runners.protocol import SPEC_FILE, STDERR_FILE, Event, ProtocolError, RunSpec

_STEP_COLUMNS = ("step", "phase", "latency_s", "tokens", "samples", "loss", "lr", "ttft_s")


@dataclass(frozen=True, slots=True)
class RunState:
    """What a run dir says about a run, before any sample is read."""

    spec: RunSpec
    events: tuple[Event, ...]
    status: str
    error_type: str | None
    error_text: str | None
    t_start_ns: int
    t_end_ns: int


def load_spec(run_dir: Path) -> RunSpec:
    try:
        return RunSpec.from_json((run_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read {run_dir / SPEC_FILE}: {e.strerror or e}") from None
    except ProtocolError as e:
        raise BadInput(f"malformed {run_dir / SPEC_FILE}: {e}") from None


def _stderr_tail(run_dir: Path) -> str | None:
    try:
        lines = (run_dir / STDERR_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in lines if ln.strip()]
    return lines[-1][:500] if lines else None


def classify(run_dir: Path, *, alive: bool | None = None) -> RunState:
    """Decide a run's status from its events and whether its runner still lives."""
    spec = load_spec(run_dir)
    events, _bad = rundir.read_events(run_dir)
    end = fold.ending(events)
    error_type = error_text = None
    if end is not None:
        status, error_type, error_text = end.status, end.error_type, end.error_text
    elif queue.is_waiting(run_dir):
        status = "queued"
    else:
        if alive is None:
            alive = rundir.runner_alive(run_dir)
        if alive:
            status = "running"
        else:
            status = "orphaned"
            last = events[-1] if events else None
            where = f" after {last.kind} event" if last else " before its first event"
            error_type = "crash"
            error_text = f"runner died without a result{where}"
            tail = _stderr_tail(run_dir)
            if tail:
                error_text += f"; stderr: {tail}"
    started = next((e for e in events if e.kind == "started"), None)
    t_start = started.t_ns if started else (events[0].t_ns if events else spec.created_ns)
    t_end = events[-1].t_ns if events else t_start
    return RunState(spec, tuple(events), status, error_type, error_text, t_start, t_end)


def _sample_device(started: Event | None, device: str, simulated: bool) -> str:
    """The spool device name of the run's device: what the runner said it sampled as
    (`gpu<NVML index>`, mapped through CUDA_VISIBLE_DEVICES), else derived from `cuda:N`.
    A simulated run is measured on the simulated `gpu0`."""
    if simulated and device == "cpu":
        return "gpu0"
    named = started.get("sample_device") if started else None
    if isinstance(named, str) and named:
        return named
    if device.startswith("cuda"):
        return f"gpu{device.partition(':')[2] or 0}"
    return "cpu"


COVERAGE_WARN = 0.9
"""Below this fraction of the measured window covered by samples, AMU, PCU and the power
integral carry a note saying how much of the window they saw."""

_SAMPLED = (("amu", "fraction"), ("amu_gib", "GiB"), ("pcu", "fraction"))


def _metric(name: str, value: float | None, unit: str, source: str,
            note: str | None = None) -> dict[str, Any]:
    if value is None:  # a NULL always says why (DESIGN.md section 6)
        return {"name": name, "value": None, "unit": unit, "source": "none",
                "note": note or "not measured by this run"}
    return {"name": name, "value": value, "unit": unit, "source": source, "note": note}


def sample_metrics(samples: list[Sample], dev: str, t0_ns: int, t1_ns: int, n_cpus: int,
                   missing: str = "no samples") -> tuple[list[dict[str, Any]], str | None]:
    """AMU, PCU, the power-integral energy and the sample coverage of the measured window
    on spool device `dev`, each with its source, and a note where a value is missing or
    rests on part of the window.

    Gaps longer than `pm.sample_gap_ns` (a daemon killed, stopped or starved) are holes,
    never interpolated over; `sample_coverage` stores the fraction of the window the
    samples cover. `missing` says why there may be no samples at all.
    """
    mine = sorted((s for s in samples if s.device == dev), key=lambda s: s.t_ns)
    if not mine:
        why = f"no samples of {dev} in the measured window: {missing}"
        out = [_metric(name, None, unit, "none", why) for name, unit in _SAMPLED]
        out.append(_metric("sample_coverage", 0.0, "fraction", "none", why))
        return out, None
    source = "simulated" if any(s.simulated for s in mine) else mine[0].source
    times = [s.t_ns for s in mine]
    gap_ns = pm.sample_gap_ns(times)
    covered, hole_ns = pm.coverage(times, t0_ns, t1_ns, gap_ns)
    note = None
    if covered is not None and covered < COVERAGE_WARN:
        note = (f"samples cover {covered:.0%} of the measured window (longest gap "
                f"{hole_ns / 1e9:.1f} s); the mean is over the covered part")
    frac, gib = pm.amu(mine, t0_ns, t1_ns, max_gap_ns=gap_ns)
    pcu, pcu_source = pm.pcu(mine, t0_ns, t1_ns, n_cpus=n_cpus, max_gap_ns=gap_ns)
    unreported = f"{dev}'s samples in the window carry no such reading"
    out = [
        _metric("amu", frac, "fraction", source, note if frac is not None else unreported),
        _metric("amu_gib", gib, "GiB", source, note if gib is not None else unreported),
        _metric("pcu", pcu, "fraction", pcu_source or source,
                note if pcu is not None else unreported),
        _metric("sample_coverage", covered, "fraction", source, note),
    ]
    power = [(s.t_ns, s.power_w) for s in mine if s.power_w is not None]
    if power:
        e = pm.energy_integral_j([t for t, _ in power], [p for _, p in power], t0_ns, t1_ns,
                                 max_gap_ns=gap_ns)
        out.append(_metric("energy_integral_j", e, "J", source, note))
    return out, pcu_source


def _no_samples_reason(result: Event | None, dev: str) -> str:
    """Why a run's device may have no samples, from what the runner reported."""
    info = (result.get("info") or {}) if result is not None else {}
    if info.get("profiler_watched") is False:
        return "no profiling daemon was reachable when the run started"
    if result is None:
        return "the run ended before the profiling daemon sampled it"
    return (f"the profiling daemon sent none for {dev} (it stopped, was killed, or does not "
            "sample this device)")


def build_bundle(run_dir: Path, home: Path, state: RunState | None = None) -> RunBundle:
    """Everything the store needs for one run, read from its dir and the spool."""
    state = state or classify(run_dir)
    spec = state.spec
    events = state.events
    started = next((e for e in events if e.kind == "started"), None)
    result = next((e for e in reversed(events) if e.kind == "result"), None)
    device = str(started.get("device")) if started and started.get("device") else spec.device
    measure = next((e for e in events if e.kind == "window" and e.get("name") == "measure"), None)
    t0 = int(measure.get("t0_ns")) if measure else state.t_start_ns
    t1 = int(measure.get("t1_ns")) if measure else state.t_end_ns

    dev = _sample_device(started, device, spec.simulate_gpu)
    samples = [s for s in spool.read_samples(homes.spool_dir(home), state.t_start_ns,
                                             state.t_end_ns, {"cpu", dev})
               if spec.simulate_gpu or not s.simulated]  # never simulated data it did not ask for
    n_cpus = int((started.get("cpu_count") if started else None) or os.cpu_count() or 1)
    metrics, pcu_source = sample_metrics(samples, dev, t0, t1, n_cpus,
                                         _no_samples_reason(result, dev))
    have = {m["name"] for m in metrics}
    if result is not None:
        for m in result.get("metrics") or ():
            if m.get("name") in have:
                continue
            metrics.append(_metric(m.get("name"), m.get("value"), m.get("unit", ""),
                                   m.get("source", "runner"), m.get("note")))
            have.add(m.get("name"))
    info = dict(result.get("info") or {}) if result else {}
    versions = dict(started.get("versions") or {}) if started else {}
    group = _group(spec.technique)
    simulated = bool(spec.simulate_gpu)

    run = {
        **{k: v for k, v in spec.to_dict().items() if k not in ("params", "simulate_gpu",
                                                                 "created_ns", "device")},
        "device": device,
        "params": json.dumps(dict(spec.params), sort_keys=True),
        "group_name": group,
        "simulated": simulated,
        "weights": info.get("weights"),
        "status": state.status,
        "error_type": state.error_type if state.status != "ok" else None,
        "error_text": state.error_text if state.status != "ok" else None,
        "created_at": _ts(spec.created_ns),
        "started_at": _ts(state.t_start_ns),
        "ended_at": _ts(state.t_end_ns) if state.status != "running" else None,
        "host": (started.get("host") if started else None) or socket.gethostname(),
        "pid": started.get("pid") if started else rundir.runner_pid(run_dir),
        "contended": info.get("contended"),
        "torch_version": versions.get("torch"),
        "transformers_version": versions.get("transformers"),
        "peft_version": versions.get("peft"),
        "quanto_version": versions.get("optimum-quanto") or versions.get("quanto"),
        "driver_version": versions.get("driver"),
        "cuda_version": versions.get("cuda"),
        "gpu_name": started.get("gpu_name") if started else None,
        "pcu_source": pcu_source,
        "energy_note": _energy_note(measure, info),
        "info": json.dumps(info, sort_keys=True, default=str),
        "ingested_at": _ts(time.time_ns()),
    }
    steps = [_step_row(e) for e in events if e.kind == "step"]
    windows = [{"name": e.get("name"), "device": e.get("device"), "t0_ns": e.get("t0_ns"),
                "t1_ns": e.get("t1_ns"), "energy_j": e.get("energy_j"),
                "energy_source": e.get("energy_source")} for e in events if e.kind == "window"]
    raw = [{"t_ns": e.t_ns, "kind": e.kind, "payload": dict(e.fields)} for e in events]
    return RunBundle(run=run, samples=samples, steps=steps, windows=windows, events=raw,
                     metrics=metrics)


def _group(technique: str) -> str | None:
    """The technique's comparison group; None for an id the catalog no longer knows."""
    try:
        return catalog.technique(technique).group
    except runner_errors.BadInput:
        return None


def _energy_note(measure: Event | None, info: dict[str, Any]) -> str | None:
    """Why the measured window has no energy (or how it was corrected), from the runner."""
    note = measure.get("energy_note") if measure is not None else None
    return str(note) if note else (str(info["energy_note"]) if info.get("energy_note") else None)


def _ts(t_ns: int | None) -> Any:
    if t_ns is None:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(t_ns / 1e9, tz=UTC)


def _step_row(e: Event) -> dict[str, Any]:
    row: dict[str, Any] = {k: e.get(k) for k in _STEP_COLUMNS}
    row["t_ns"] = e.t_ns
    extra = {k: v for k, v in e.fields.items() if k not in _STEP_COLUMNS}
    row["extra"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def ingest_run(store: Store, run_dir: Path, home: Path, *, alive: bool | None = None) -> RunState:
    """Ingest one run dir (idempotent); returns the state it was stored with."""
    state = classify(run_dir, alive=alive)
    store.ingest(build_bundle(run_dir, home, state))
    rundir.mark_ingested(run_dir, state.status)
    return state


def recover(store: Store, home: Path, run_dirs: Iterable[Path] | None = None
            ) -> list[tuple[str, str]]:
    """Ingest finished or orphaned run dirs not yet stored; running ones are stored as
    running. Runs waiting in the queue are the dispatcher's, and left alone."""
    done: list[tuple[str, str]] = []
    for run_dir in run_dirs if run_dirs is not None else rundir.iter_dirs(home):
        if rundir.ingested_final(run_dir) or queue.is_waiting(run_dir):
            continue
        try:
            state = ingest_run(store, run_dir, home)
        except BadInput as e:  # one malformed run dir never stops the others
            done.append((run_dir.name, f"skipped: {e}"))
            continue
        done.append((state.spec.run_id, state.status))
    return done
