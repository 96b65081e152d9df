"""The CLI's command handlers; each takes the parsed args and returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import efficientllm_data

from profiling import client
from profiling import home as homes
from runners.protocol import Event, ProtocolError, RunSpec, parse_set

from . import ingest, launcher
from .cli import db_path, emit_json, format_rows
from .display import contention, run_label
from .display import num as _fmt
from .errors import BadInput, DatabaseLocked, EfficientLLMError, QueryError
from .store import Store

# Metrics shown first, per family, in `run`, `runs` and `show` (all are stored).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "inference": ("it", "al_s", "ttft_s", "tpot_s", "amu", "pcu", "aec_w"),
    "finetuning": ("st", "al_s", "loss", "amu", "pcu", "aec_w"),
    "pretraining": ("tt", "al_s", "loss", "amu", "pcu", "aec_w"),
}
SIM_MARK = "(SIMULATED GPU)"
"""What `runs` and `compare` tables add to a simulated run's device or name (DESIGN.md 4)."""


def _home() -> Path:
    home = homes.data_dir()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create data dir {home}: {e.strerror or e}") from None
    if not home.is_dir():
        raise BadInput(f"data dir {home} is not a directory")
    return home


def _daemon_idle_s() -> float:
    """How long an auto-started daemon waits with nothing to watch before it exits."""
    raw = os.environ.get("EFFICIENTLLM_DAEMON_IDLE_S", "300")
    try:
        return max(1.0, float(raw))
    except ValueError:
        raise BadInput(f"EFFICIENTLLM_DAEMON_IDLE_S must be a number of seconds, got {raw!r}"
                       ) from None


def _store(args: argparse.Namespace, home: Path) -> Store:
    raw = os.environ.get("EFFICIENTLLM_DB_LOCK_TIMEOUT_S", "30")
    try:
        timeout_s = max(0.0, float(raw))
    except ValueError:
        raise BadInput(f"EFFICIENTLLM_DB_LOCK_TIMEOUT_S must be seconds, got {raw!r}") from None
    return Store(db_path(args, home), lock_timeout_s=timeout_s)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole rows (scripts grep run ids); a terminal gets its own width.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, width=width)


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold", no_wrap=c == "run_id")
    for r in rows:
        table.add_row(*(_fmt(v) for v in r))
    _console().print(table)


# ----------------------------------------------------------------------------- tui


def cmd_tui(args: argparse.Namespace) -> int:
    home = _home()
    from .app import EfficientLLMApp

    EfficientLLMApp(db_path=db_path(args, home), home=home).run()
    return 0


# ----------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    try:
        params = parse_set(args.sets)
    except ProtocolError as e:
        raise BadInput(str(e)) from None
    spec = launcher.build_spec(
        model=args.model, technique=args.technique, family=args.family, device=args.device,
        params=params, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
        seq_len=args.seq_len, new_tokens=args.new_tokens, seed=args.seed, dataset=args.dataset,
        simulate_gpu=True if args.simulate_gpu else None,
    )
    _check_available(spec)
    home = _home()
    store = _store(args, home)
    store.check()  # a corrupt DB is reported now, before any work; a locked one is waited on
    state = _execute(spec, store, home, progress=_Progress(spec, enabled=not args.json))
    run = store.get_run(spec.run_id) or {}
    doc = _run_doc(run, state.status)
    if args.json:
        emit_json(doc)
    elif state.error_type != "bad_input":  # bad input gets its one line below, no table
        _print_run(doc)
    if state.status == "ok":
        return 0
    if state.error_type == "bad_input":
        print(f"efficientllm: error: {state.error_text}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"efficientllm: run {state.status}: {state.error_text}", file=sys.stderr)
    return 1


def _check_available(spec: RunSpec) -> None:
    if not launcher.technique_available(spec.technique):
        raise BadInput(f"technique {spec.technique!r} ({spec.family}) is not implemented yet; "
                       "see `efficientllm techniques`")
    card = efficientllm_data.find_model(spec.model)
    if card is not None and not card.get("available"):
        raise BadInput(f"model {spec.model!r} is not available yet; see `efficientllm models`")


def _execute(spec: RunSpec, store: Store, home: Path, *,
             progress: Callable[[Event], None] | None) -> ingest.RunState:
    """Launch one run detached, follow it to the end and ingest it."""
    try:
        client.ensure_daemon(home, idle_exit_s=_daemon_idle_s(),
                             simulate_gpu=True if spec.simulate_gpu else None)
    except client.DaemonError as e:
        if spec.simulate_gpu:
            raise BadInput(f"cannot simulate a GPU: {e}") from None
        print(f"efficientllm: warning: no profiling daemon ({e}); the run will have no samples",
              file=sys.stderr)
    run_dir = launcher.prepare_run_dir(spec, home)
    pid = launcher.spawn_runner(run_dir)
    try:
        store.upsert_run(_queued_row(spec, pid))
    except DatabaseLocked:
        pass  # the run is safe in its dir; the final ingest waits for the lock again
    launcher.follow(run_dir, progress, pid=pid)
    try:
        return ingest.ingest_run(store, run_dir, home, alive=False)
    except DatabaseLocked as e:
        raise DatabaseLocked(f"{e}; run {spec.run_id} is safe in {run_dir}: "
                             "`efficientllm recover` stores it once the database is free") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_sweep

    specs = load_sweep(Path(args.file))
    for spec in specs:
        _check_available(spec)
    home = _home()
    store = _store(args, home)
    store.check()
    by_device: dict[str, list[RunSpec]] = {}
    for spec in specs:
        by_device.setdefault(spec.device, []).append(spec)
    results: list[tuple[RunSpec, ingest.RunState]] = []
    lock = threading.Lock()

    def drain(queue: list[RunSpec]) -> None:
        for spec in queue:  # one device's queue runs in order; OOM and failures go on
            state = _execute(spec, store, home, progress=None)
            with lock:
                results.append((spec, state))
                if not args.json:
                    print(f"{spec.run_id}: {state.status}"
                          + (f" ({state.error_text})" if state.error_text else ""),
                          file=sys.stderr, flush=True)

    threads = [threading.Thread(target=drain, args=(q,), daemon=True) for q in by_device.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = {s.run_id: i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order[r[0].run_id])
    if args.json:
        emit_json([{"run_id": s.run_id, "model": s.model, "technique": s.technique,
                    "device": s.device, "status": st.status, "error": st.error_text}
                   for s, st in results])
    else:
        _table(["run_id", "model", "technique", "device", "status", "error"],
               [[s.run_id, s.model, s.technique, s.device, st.status, st.error_text]
                for s, st in results])
    return 0 if all(st.status == "ok" for _, st in results) else 1


def _queued_row(spec: Any, pid: int) -> dict[str, Any]:
    from datetime import datetime

    entry = efficientllm_data.find_technique(spec.technique) or {}
    return {"run_id": spec.run_id, "family": spec.family, "technique": spec.technique,
            "model": spec.model, "device": spec.device, "seed": spec.seed,
            "batch_size": spec.batch_size, "seq_len": spec.seq_len,
            "new_tokens": spec.new_tokens, "steps": spec.steps, "warmup": spec.warmup,
            "dataset": spec.dataset, "params": json.dumps(dict(spec.params), sort_keys=True),
            "group_name": entry.get("group"), "simulated": spec.simulate_gpu,
            "status": "running", "pid": pid,
            "created_at": datetime.fromtimestamp(spec.created_ns / 1e9, tz=UTC)}


class _Progress:
    """Shows a run's progress: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, spec: Any, *, enabled: bool) -> None:
        self.spec = spec
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total = spec.warmup + spec.steps
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), console=_console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(f"{spec.model} x {spec.technique}", total=self.total)
        elif enabled:
            print(f"run {spec.run_id}: {spec.family} {spec.model} x {spec.technique}",
                  file=sys.stderr, flush=True)

    def __call__(self, ev: Event) -> None:
        if not self.enabled:
            return
        if ev.kind == "step":
            self.done += 1
            if self._bar is not None:
                self._bar.update(self._task, completed=min(self.done, self.total))
            else:
                print(f"  step {self.done}/{self.total} [{ev.get('phase')}] "
                      f"latency {_fmt(ev.get('latency_s'))} s", file=sys.stderr, flush=True)
        elif ev.kind == "phase":
            if self._bar is not None:
                self._bar.update(self._task, description=f"{self.spec.model} x "
                                 f"{self.spec.technique}: {ev.get('name')}")
            else:
                print(f"  phase {ev.get('name')}", file=sys.stderr, flush=True)
        elif ev.kind in ("result", "error") and self._bar is not None:
            self._bar.stop()
            self._bar = None


def _run_doc(run: dict[str, Any], status: str) -> dict[str, Any]:
    metrics = run.get("metrics") or {}
    doc = {k: v for k, v in run.items() if k != "metrics"}
    doc["status"] = run.get("status", status)
    doc["metrics"] = {name: v[0] for name, v in sorted(metrics.items())}
    doc["units"] = {name: v[1] for name, v in sorted(metrics.items())}
    doc["sources"] = {name: v[2] for name, v in sorted(metrics.items())}
    doc["notes"] = dict(sorted((run.get("metric_notes") or {}).items()))
    doc.pop("metric_notes", None)
    return doc


def _print_run(doc: dict[str, Any]) -> None:
    head = (f"{doc.get('run_id')}  {doc.get('family')}  {doc.get('model')} x "
            f"{doc.get('technique')}  on {doc.get('device')}  status {doc.get('status')}")
    if doc.get("simulated"):
        head += "  [SIMULATED GPU DATA]"
    _console().print(head)
    if doc.get("error_text"):
        _console().print(f"error ({doc.get('error_type')}): {doc.get('error_text')}")
    if doc.get("workload"):
        _console().print(f"workload (ranked only within it): {doc['workload']}")
    shared = contention(doc) or "unknown — not recorded for this run"
    _console().print(f"contended: {shared}", markup=False)
    notes = doc.get("notes") or {}
    rows = [[n, doc["metrics"][n], doc["units"].get(n), doc["sources"].get(n), notes.get(n)]
            for n in doc["metrics"]]
    if rows:
        _table(["metric", "value", "unit", "source", "why missing / note"], rows)


# ----------------------------------------------------------------------------- reads


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args, _home())
    if args.limit < 1:
        raise BadInput("--limit must be at least 1")
    runs = store.list_runs(family=args.family, model=args.model, technique=args.technique,
                           status=args.status, limit=args.limit)
    if args.json:
        sources = store.metric_sources([r["run_id"] for r in runs]) if runs else {}
        emit_json([{**r, "sources": sources.get(r["run_id"], {})} for r in runs])
        return 0
    if not runs:
        print("no runs stored yet; try: efficientllm run -m tiny -t fp32 --device cpu")
        return 0
    cols = ["run_id", "family", "model", "technique", "device", "status", "it", "st", "tt",
            "al_s", "amu", "aec_w"]
    _table(cols, [[_sim_device(r) if c == "device" else r.get(c) for c in cols] for r in runs])
    _sim_footnote(runs)
    return 0


def _sim_device(run: dict[str, Any]) -> Any:
    """The device column of a run: `cpu (SIMULATED GPU)` when its GPU data was simulated."""
    device = run.get("device")
    return f"{_fmt(device)} {SIM_MARK}" if run.get("simulated") else device


def _sim_footnote(runs: list[dict[str, Any]]) -> None:
    """One line under a table that shows simulated runs, saying what the marker means."""
    if any(r.get("simulated") for r in runs):
        _console().print(f"{SIM_MARK}: AMU, PCU and energy of these runs come from a "
                         "simulated GPU (`--simulate-gpu`), not from hardware", style="bold red")


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args, _home())
    run = store.get_run(args.run_id)
    if run is None:
        raise BadInput(f"no run {args.run_id!r} in {store.path}")
    doc = _run_doc(run, run.get("status", ""))
    if args.json:
        emit_json(doc)
    else:
        _print_run(doc)
        keys = ("family", "group_name", "device", "batch_size", "seq_len", "new_tokens", "steps",
                "warmup", "params", "weights", "started_at", "ended_at", "host",
                "torch_version", "transformers_version")
        _table(["field", "value"], [[k, doc.get(k)] for k in keys])
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    store = _store(args, _home())
    try:
        result = store.query(args.query, read_only=not args.write)
    except QueryError as e:
        if not args.write and e.msg.startswith("read-only:"):
            raise QueryError(f"{e.msg}; use --write to allow it", e.title) from None
        raise
    if args.format == "table":
        _table(list(result.columns), [list(r) for r in result.rows])
    else:
        sys.stdout.write(format_rows(result.columns, result.rows, args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _store(args, _home())
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise BadInput(f"output {out} is a directory; give a file path")
    if not out.parent.is_dir():
        raise BadInput(f"output directory {out.parent} does not exist")
    n = store.export(out, args.format, run_ids=args.run_ids or None, table=args.table)
    print(f"wrote {n} rows of {args.table} to {out}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from . import plot

    if args.metrics is not None and args.plot is None:
        raise BadInput("--metrics chooses the chart's panels; give --plot FILE.svg with it")
    plot_path = plot.check_path(args.plot) if args.plot is not None else None
    store = _store(args, _home())
    runs = []
    for rid in args.run_ids:
        run = store.get_run(rid)
        if run is None:
            raise BadInput(f"no run {rid!r} in {store.path}")
        runs.append(run)
    chosen: list[str] = []
    if plot_path is not None:  # written before any output: a failure leaves stdout empty
        chosen = plot.choose_metrics(runs, args.metrics)
        plot.write_svg(plot_path, plot.render_svg(runs, chosen))
    board = store.leaderboard(run_ids=args.run_ids)
    names = sorted({n for r in runs for n in (r.get("metrics") or {})})
    if args.json:
        emit_json({"runs": [_run_doc(r, r.get("status", "")) for r in runs],
                   "leaderboard": board})
    else:
        cols = ["metric"] + [run_label(r) + (f" {SIM_MARK}" if r.get("simulated") else "")
                             for r in runs]
        notes: list[str] = []  # why a value is missing, numbered once each

        def cell(run: dict[str, Any], name: str) -> Any:
            value = (run.get("metrics") or {}).get(name, (None,))[0]
            note = (run.get("metric_notes") or {}).get(name)
            if value is not None or not note:
                return value
            if note not in notes:
                notes.append(note)
            return f"n/a [{notes.index(note) + 1}]"

        _table(cols, [[n] + [cell(r, n) for r in runs] for n in names], title="raw metrics")
        for i, note in enumerate(notes, 1):
            _console().print(f"[{i}] {note}", markup=False, highlight=False)
        if board:
            workloads = sorted({b.get("workload") or "" for b in board})
            bcols = ["run_id", "technique", "metric", "value", "score", "rank"]
            _table(bcols + ["workload", "data"],
                   [[b.get(c) for c in bcols]
                    + [f"W{workloads.index(b.get('workload') or '') + 1}",
                       "SIMULATED" if b.get("simulated") else "measured"] for b in board],
                   title="paper normalisation: score in [0.1, 1] (higher is better), "
                   "rank 1 = best, ranked only within one workload")
            for i, w in enumerate(workloads, 1):
                _console().print(f"W{i}: {w}", markup=False, highlight=False)
        _sim_footnote(runs)
    if plot_path is not None:
        print(f"wrote a chart of {len(runs)} run(s) x {len(chosen)} metric(s) to {plot_path}",
              file=sys.stderr)
    return 0


def _catalog_rows(kind: str) -> list[dict[str, Any]]:
    return list(efficientllm_data.catalog()[kind])


def cmd_models(args: argparse.Namespace) -> int:
    rows = _catalog_rows("models")
    if args.json:
        emit_json(rows)
        return 0
    _table(["id", "arch", "weights", "layers", "hidden", "heads/kv", "status", "description"],
           [[m["id"], m["arch"], m["weights"], m["num_layers"], m["hidden_size"],
             f"{m['num_heads']}/{m['num_kv_heads']}",
             "available" if m.get("available") else "not yet implemented", m["description"]]
            for m in rows])
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    rows = _catalog_rows("techniques")
    if args.json:
        emit_json(rows)
        return 0
    _table(["id", "family", "group", "status", "description"],
           [[t["id"], t["family"], t["group"],
             "available" if t.get("available") else "not yet implemented", t["description"]]
            for t in rows])
    return 0


# ----------------------------------------------------------------------------- maintenance


def cmd_recover(args: argparse.Namespace) -> int:
    home = _home()
    store = _store(args, home)
    done = ingest.recover(store, home)
    if args.json:
        emit_json([{"run_id": r, "status": s} for r, s in done])
    elif not done:
        print("nothing to recover")
    else:
        for rid, status in done:
            print(f"{rid}: {status}")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    home = _home()
    if args.action == "start":
        try:
            info = client.ensure_daemon(home, rate_hz=args.rate_hz, idle_exit_s=args.idle_exit_s,
                                        simulate_gpu=True if args.simulate_gpu else None)
        except client.DaemonError as e:
            raise EfficientLLMError(f"could not start the profiling daemon: {e}") from None
        status: Any = {"running": True, "launched": info.launched, **(info.status or {})}
    elif args.action == "stop":
        stopped = client.stop_daemon(home)
        status = {"stopped": stopped}
    else:
        status = client.daemon_status(home)
        if status is None:
            status = {"running": False}
    if args.json:
        emit_json(status)
    else:
        for k, v in (status.items() if isinstance(status, dict) else [("status", status)]):
            print(f"{k}: {v}")
    return 0
