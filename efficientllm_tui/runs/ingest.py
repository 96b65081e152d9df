"""Turn a run dir (+ the daemon's spooled samples) into one idempotent store transaction.

Why here and not in the runner: the runner knows its own steps and energy windows, but
memory and compute activity come from the profiling daemon's samples, which only meet the
run's events at ingest. Ingest reads everything from files (run dir, spool), so a killed
launcher or a locked database loses nothing: `recover` can always do it again later.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput, StoreError
from efficientllm_tui.runs import fold, multidevice, queue, rundir
from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from efficientllm_tui.store.schema import RUN_COLUMNS
from profiling import home as homes
from profiling import metrics as pm
from profiling.daemon import losses, spool
from profiling.sample import Sample
from runners import errors as runner_errors
from runners.models import catalog
from runners.protocol import SPEC_FILE, STDERR_FILE, Event, ProtocolError, RunSpec

REMOTE_SPOOL_DIR = "spool"
"""A remote run's samples: its node's spool segments of the run, copied into its run dir."""
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
    """The run's spec; BadInput when it is unreadable, malformed, or names another run (a
    run dir is stored under its own name only: a copied or edited spec.json must never
    replace another run's stored rows)."""
    try:
        spec = RunSpec.from_json((run_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {run_dir / SPEC_FILE}: {getattr(e, 'strerror', None) or e}"
                       ) from None
    except ProtocolError as e:
        raise BadInput(f"malformed {run_dir / SPEC_FILE}: {e}") from None
    if spec.run_id != run_dir.name:
        raise BadInput(f"{run_dir / SPEC_FILE} names run {spec.run_id!r}, not its own dir "
                       f"{run_dir.name!r}; not stored (it would replace another run's data)")
    return spec


def _span(measure: Event | None, start_ns: int, end_ns: int) -> tuple[int, int, str | None]:
    """The measured window (t0, t1), or the run's whole span with a note when the runner
    reported none or a malformed one (non-numeric, reversed)."""
    if measure is None:
        return start_ns, end_ns, None
    t0, t1 = measure.get("t0_ns"), measure.get("t1_ns")
    if isinstance(t0, int) and isinstance(t1, int) and not isinstance(t0, bool) \
            and not isinstance(t1, bool) and 0 <= t0 <= t1:
        return t0, t1, None
    return start_ns, end_ns, (f"the measure window is malformed (t0_ns={t0!r}, t1_ns={t1!r}); "
                              "memory and compute are over the run's whole span")


_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b|^Killed\b|^"
                         r"(bad_input|unsupported|crash|oom): ")


def _stderr_tail(run_dir: Path) -> str | None:
    """The runner's last words on stderr: its last error line (a traceback's final line,
    `oom: ...`), never a library warning printed earlier; None without one."""
    try:
        lines = (run_dir / STDERR_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln.strip() for ln in lines if _ERROR_LINE.match(ln.strip())]
    return errors[-1][:500] if errors else None


def _rank_events(run_dir: Path) -> list[tuple[int, list[Event]]]:
    """The events of a multi-rank run's other ranks (`events.rank<N>.jsonl`), by rank."""
    out = []
    for path in run_dir.glob("events.rank*.jsonl"):
        rank = path.name[len("events.rank"):-len(".jsonl")]
        if rank.isdigit():
            out.append((int(rank), rundir.read_events(run_dir, path.name)[0]))
    return out


def classify(run_dir: Path, *, alive: bool | None = None) -> RunState:
    """Decide a run's status from its events and whether its runner still lives."""
    spec = load_spec(run_dir)
    events, _bad = rundir.read_events(run_dir)
    end = fold.ending(events)
    error_type = error_text = None
    if end is not None:
        if (spec.world_size or 1) > 1:
            end = fold.rank_cause(end, _rank_events(run_dir))
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
            how = rundir.exit_status(run_dir)
            error_text = f"runner {how or 'died'} without a result{where}"
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
    info = result.get("info") if result is not None else None
    info = info if isinstance(info, dict) else {}
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
    t0, t1, span_note = _span(measure, state.t_start_ns, max(state.t_start_ns, state.t_end_ns))

    dev = _sample_device(started, device, spec.simulate_gpu)
    devs = multidevice.sample_devices(started, dev)  # a run on several GPUs: all of them
    # A Ray job's run brings its node's samples of the run in its dir (runs.ray_jobs).
    spool_root = run_dir / REMOTE_SPOOL_DIR if (run_dir / REMOTE_SPOOL_DIR).is_dir() \
        else homes.spool_dir(home)
    samples = [s for s in spool.read_samples(spool_root, state.t_start_ns,
                                             state.t_end_ns, {"cpu", dev, *devs})
               if spec.simulate_gpu or not s.simulated]  # never simulated data it did not ask for
    n_cpus = int((started.get("cpu_count") if started else None) or os.cpu_count() or 1)
    if len(devs) > 1:
        metrics, pcu_source = multidevice.metrics(
            samples, devs, lambda ss, d: sample_metrics(ss, d, t0, t1, n_cpus,
                                                        _no_samples_reason(result, d)))
    else:
        metrics, pcu_source = sample_metrics(samples, dev, t0, t1, n_cpus,
                                             _no_samples_reason(result, dev))
    lost = _lost_samples(home, t0, t1)
    if lost:
        span_note = f"{span_note}; {lost}" if span_note else lost
    if span_note:
        for m in metrics:
            m["note"] = f"{m['note']}; {span_note}" if m.get("note") else span_note
    have = {m["name"] for m in metrics}
    for m in _result_metrics(result):
        if m["name"] not in have:
            metrics.append(m)
            have.add(m["name"])
    raw_info = result.get("info") if result is not None else None
    info = dict(raw_info) if isinstance(raw_info, dict) else {}
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
        "sweep_id": _sweep_id(run_dir),
        "world_size": spec.world_size,
        "info": json.dumps(info, sort_keys=True, default=str),
        "ingested_at": _ts(time.time_ns()),
    }
    run = _clean_run(run)
    steps = [_step_row(e) for e in events if e.kind == "step"]
    windows = [{k: _typed(k, e.get(k)) for k in ("name", "device", "t0_ns", "t1_ns",
                                                 "energy_j", "energy_source")}
               for e in events if e.kind == "window"]
    raw = [{"t_ns": e.t_ns, "kind": e.kind, "payload": dict(e.fields)} for e in events]
    return RunBundle(run=run, samples=samples, steps=steps, windows=windows, events=raw,
                     metrics=metrics)


def _sweep_id(run_dir: Path) -> str | None:
    """The sweep or study that queued the run (its queue entry says); None otherwise."""
    try:
        entry = queue.entry(run_dir)
    except ValueError:
        return None
    return entry.sweep_id if entry is not None else None


def _lost_samples(home: Path, t0_ns: int, t1_ns: int) -> str | None:
    """What the profiling daemon recorded losing in the window (a full spool disk), in
    words; None when it lost nothing there."""
    try:
        records = losses.spool_losses(home, t0_ns, t1_ns)
    except (OSError, ValueError):
        return None
    if not records:
        return None
    n = sum(r.lines_lost for r in records)
    return (f"the profiling daemon lost {n} sample line(s) in this window "
            f"({records[-1].reason})")


def _result_metrics(result: Event | None) -> list[dict[str, Any]]:
    """The runner's metrics; an entry of the wrong shape is left out, never a crash (the
    runner writes them through runners.protocol.Metric, so only a damaged file has such)."""
    raw = result.get("metrics") if result is not None else None
    out: list[dict[str, Any]] = []
    for m in raw if isinstance(raw, list) else ():
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            continue
        value = m.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            value = None
        note = m.get("note")
        out.append(_metric(m["name"], value, str(m.get("unit") or ""),
                           str(m.get("source") or "runner"),
                           note if isinstance(note, str) else None))
    return out


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


_INT_FIELDS = ("step", "tokens", "samples", "t0_ns", "t1_ns")
_TEXT_FIELDS = ("phase", "name", "device", "energy_source")


def _typed(name: str, value: Any) -> Any:
    """A field value of the type its column has, else None: a damaged event line costs that
    value, never the run (the raw event is kept in `events` as it was)."""
    if value is None or isinstance(value, bool):
        return None
    if name in _INT_FIELDS:
        return value if isinstance(value, int) else None
    if name in _TEXT_FIELDS:
        return value if isinstance(value, str) else None
    if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
        return float(value)
    return None


_PY_TYPES: dict[str, tuple[type, ...]] = {"VARCHAR": (str,), "INTEGER": (int,),
                                          "BIGINT": (int,), "BOOLEAN": (bool,),
                                          "DOUBLE": (int, float), "JSON": (str,)}


def _clean_run(run: dict[str, Any]) -> dict[str, Any]:
    """The runs row with every value the runner reported in the wrong type left NULL (a
    damaged `started` or `result` event costs that one field, not the run)."""
    out = {}
    for name, value in run.items():
        want = _PY_TYPES.get(RUN_COLUMNS.get(name, ""))
        bad = want is not None and value is not None and (
            not isinstance(value, want) or (isinstance(value, bool) and bool not in want))
        out[name] = None if bad else value
    return out


def _step_row(e: Event) -> dict[str, Any]:
    row: dict[str, Any] = {k: _typed(k, e.get(k)) for k in _STEP_COLUMNS}
    row["t_ns"] = e.t_ns
    extra = {k: v for k, v in e.fields.items() if k not in _STEP_COLUMNS}
    row["extra"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


EVAL_PARAM = "score_of"
"""The `--set` parameter an `efficientllm eval` job carries: the stored run it re-scores."""


def attach_eval(store: Store, state: RunState, target: str) -> None:
    """Store an ended `efficientllm eval` job onto the run it re-scored: its metrics (only
    when it ended ok: a failed one changes no number), its windows, and one `eval` event
    saying what was scored, when, and how it ended."""
    result = next((e for e in reversed(state.events) if e.kind == "result"), None)
    ok = state.status == "ok"
    metrics = _result_metrics(result) if ok else []
    raw_info = result.get("info") if result is not None else None
    info = dict(raw_info) if isinstance(raw_info, dict) else {}
    windows = [dict(e.fields) for e in state.events if e.kind == "window"]
    params = dict(state.spec.params)
    record = {"eval_id": state.spec.run_id, "status": state.status,
              "error_type": None if ok else state.error_type,
              "error_text": None if ok else state.error_text,
              "quality": params.get("quality"), "quality_items": params.get("quality_items"),
              "device": info.get("device"), "started_ns": state.t_start_ns,
              "ended_ns": state.t_end_ns, "metrics": sorted(m["name"] for m in metrics)}
    patch: dict[str, Any] = {"evals": [record]}
    if ok:
        patch.update({k: info[k] for k in ("quality_tasks", "base_quality_tasks", "mcr_quality")
                      if k in info})
    store.attach_scores(target, metrics, windows, {"t_ns": state.t_end_ns, "payload": record},
                        patch)


def ingest_run(store: Store, run_dir: Path, home: Path, *, alive: bool | None = None) -> RunState:
    """Ingest one run dir (idempotent); returns the state it was stored with. An
    `efficientllm eval` job is stored onto the run it re-scored, once it has ended."""
    state = classify(run_dir, alive=alive)
    target = state.spec.params.get(EVAL_PARAM)
    if target:
        if state.status == "running":
            return state  # stored when it ends
        try:
            attach_eval(store, state, str(target))
        except BadInput:  # the run it re-scored was deleted: nothing to attach it to
            state = replace(state, status="failed")
    else:
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
        except StoreError:
            raise  # the database itself: every run would fail the same way
        except Exception as e:  # noqa: BLE001 - one damaged run dir never stops the others
            why = str(e) if isinstance(e, BadInput) else f"{type(e).__name__}: {e}"
            done.append((run_dir.name, f"skipped: {why}"))
            continue
        done.append((state.spec.run_id, state.status))
    return done
