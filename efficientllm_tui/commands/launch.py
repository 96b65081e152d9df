"""Commands that queue and steer runs: run, sweep, queue, stop, recover.

They only enqueue, watch and cancel (DESIGN.md section 3): the per-host dispatcher starts
queued runs and stores them, so closing the terminal, Ctrl-C or a dropped SSH connection
never loses a queued or running run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from efficientllm_tui.commands.common import (
    check_available,
    console,
    emit_json,
    home_dir,
    open_store,
    print_run,
    run_doc,
    table,
)
from efficientllm_tui.display import duration
from efficientllm_tui.display import num as fmt
from efficientllm_tui.errors import BadInput, DatabaseLocked
from efficientllm_tui.runs import dispatcher, fold, follow, ingest, queue, rundir, specs
from profiling import home as homes
from runners.protocol import Event, ProtocolError, RunSpec, new_run_id, parse_set


def goes_on(what: str, stop_hint: str) -> None:
    print(f"\nefficientllm: {what} goes on in the background (the dispatcher runs it): "
          f"`efficientllm queue` shows it, `efficientllm stop {stop_hint}` stops it",
          file=sys.stderr, flush=True)


# -- run ---------------------------------------------------------------------------------------

def queue_and_follow(spec: RunSpec, store: Any, home: Path, *, what: str,
                     show: bool) -> str | None:
    """Queue `spec`, make sure a dispatcher runs, and follow it (a progress bar when
    `show`) until it is stored; its stored status. None after Ctrl-C: the run goes on in
    the background, as the message printed says.

    Raises:
        DatabaseLocked: It ended but the database stayed locked (it is safe in its dir).
    """
    queue.enqueue(spec, home, store.path)
    dispatcher.ensure(home)
    progress = Progress(spec, enabled=show, home=home)
    try:
        status = follow.follow_run(home, spec.run_id, progress,
                                   stored_timeout_s=store.lock_timeout_s + 5)
    except KeyboardInterrupt:
        progress.close()
        goes_on(f"{what} {spec.run_id}", spec.run_id)
        return None
    progress.close()
    if status is None:
        raise DatabaseLocked(f"{what} {spec.run_id} ended but {store.path} stayed locked; it "
                             f"is safe in {homes.runs_dir(home) / spec.run_id} and the "
                             "dispatcher stores it once the database is free",
                             "Database locked")
    return status



def cmd_run(args: argparse.Namespace) -> int:
    try:
        params = parse_set(args.sets)
    except ProtocolError as e:
        raise BadInput(str(e)) from None
    device, world_size = specs.world(args.device, args.world_size, args.gpus)
    spec = specs.build_spec(
        model=args.model, technique=args.technique, family=args.family, device=device,
        params=params, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
        seq_len=args.seq_len, new_tokens=args.new_tokens, seed=args.seed, dataset=args.dataset,
        simulate_gpu=True if args.simulate_gpu else None, world_size=world_size,
    )
    check_available(spec)
    home = home_dir()
    store = open_store(args, home)
    store.check()  # a corrupt DB is reported now, before any work; a locked one is waited on
    status = queue_and_follow(spec, store, home, what="run", show=not args.json)
    if status is None:
        return 130
    run = store.get_run(spec.run_id) or {}
    doc = run_doc(run, status)
    bad_input = run.get("error_type") == "bad_input"
    if args.json:
        emit_json(doc)
    elif not bad_input:  # bad input gets its one line below, no table
        print_run(doc)
    if status == "ok":
        return 0
    if bad_input:
        print(f"efficientllm: error: {run.get('error_text')}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"efficientllm: run {status}: {run.get('error_text')}", file=sys.stderr)
    return 1


class Progress:
    """A run's progress: a rich bar on a terminal, plain lines otherwise; never past its
    total (a restarted window or extra eval steps do not count twice)."""

    def __init__(self, spec: RunSpec, *, enabled: bool, home: Path) -> None:
        self.spec = spec
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total = spec.warmup + spec.steps
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        ahead = [r for r in queue.snapshot(home)
                 if r.device_key == queue.device_key(spec.device) and r.run_id != spec.run_id
                 and (r.state == "running" or r.position > 0)]
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), console=console(stderr=True),
                                 transient=True)
            self._bar.start()
            what = f"{spec.model} x {spec.technique}"
            self._task = self._bar.add_task(
                what + (f": queued behind {len(ahead)} run(s)" if ahead else ""),
                total=self.total)
        else:
            print(f"run {spec.run_id}: {spec.family} {spec.model} x {spec.technique}"
                  + (f" (queued behind {len(ahead)} run(s))" if ahead else ""),
                  file=sys.stderr, flush=True)

    def __call__(self, ev: Event) -> None:
        if not self.enabled:
            return
        if ev.kind == "step":
            if ev.get("phase") not in fold.COUNTED_PHASES:
                return
            self.done = fold.steps_done(self.done, ev, warmup=self.spec.warmup, total=self.total)
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
            else:
                print(f"  step {self.done}/{self.total} [{ev.get('phase')}] "
                      f"latency {fmt(ev.get('latency_s'))} s", file=sys.stderr, flush=True)
        elif ev.kind == "phase":
            self.done = fold.steps_done(self.done, ev, warmup=self.spec.warmup, total=self.total)
            note = fold.one_time_note(ev.get("name"))
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done,
                                 description=f"{self.spec.model} x {self.spec.technique}: "
                                 f"{ev.get('name')}" + (f" ({note})" if note else ""))
            else:
                print(f"  phase {ev.get('name')}" + (f": {note}" if note else ""),
                      file=sys.stderr, flush=True)
        elif ev.kind in ("result", "error"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# -- sweep -------------------------------------------------------------------------------------

def _sweep_id(source: str, now_ns: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns / 1e9))
    digest = hashlib.sha1(f"{source}{now_ns}".encode()).hexdigest()[:6]
    return f"sweep-{stamp}-{digest}"


def cmd_sweep(args: argparse.Namespace) -> int:
    home = home_dir()
    store = open_store(args, home)
    if args.resume is not None:
        if args.file is not None:
            raise BadInput("give either a sweep FILE or --resume SWEEP_ID, not both")
        sweep_id, run_ids, requeued = resume_sweep(home, store, args.resume)
        if not args.json:
            print(f"sweep {sweep_id}: re-queued {requeued} run(s) that never ran; "
                  f"{len(run_ids) - requeued} kept", file=sys.stderr)
    else:
        if args.file is None:
            raise BadInput("give a sweep FILE.toml (or --resume SWEEP_ID)")
        from efficientllm_tui.runs.sweep import load_sweep

        specs = load_sweep(Path(args.file))
        sweep_id = _sweep_id(str(Path(args.file).absolute()), time.time_ns())
        if args.ray:  # every pair a job on the cluster (efficientllm_tui.runs.ray_jobs)
            return on_ray(args, home, store, sweep_id, str(Path(args.file).absolute()), specs)
        run_ids = queue_sweep(home, store, sweep_id, str(Path(args.file).absolute()), specs)
    dispatcher.ensure(home)
    if not args.follow:
        if args.json:
            emit_json({"sweep_id": sweep_id, "run_ids": run_ids, "queued": True})
        else:
            print(f"queued {len(run_ids)} run(s) as {sweep_id}; follow: efficientllm sweep "
                  f"--resume {sweep_id} --follow · list: efficientllm queue")
        return 0
    return follow_sweep(home, store, sweep_id, run_ids, as_json=args.json)


def on_ray(args: argparse.Namespace, home: Path, store: Any, sweep_id: str, source: str,
           specs: list[RunSpec], id_key: str = "sweep_id") -> int:
    """`sweep|study ... --ray ADDRESS`: the pairs as Ray jobs, stored here as they end."""
    from efficientllm_tui.runs import ray_jobs

    if args.follow or args.resume is not None:
        raise BadInput("--ray follows the jobs itself; --follow and --resume are for the "
                       "local queue")
    for spec in specs:
        check_available(spec)
    store.check()
    queue.save_sweep(home, sweep_id, source, specs)
    return ray_jobs.cmd(args.ray, specs, home, store, sweep_id, timeout_s=args.ray_timeout,
                        as_json=args.json, id_key=id_key)


def queue_sweep(home: Path, store: Any, sweep_id: str, source: str,
                specs: list[RunSpec]) -> list[str]:
    """Check every spec can run here and the database can be used, then record the sweep
    and queue its runs tagged `sweep_id`; their run ids. Nothing is queued when a check
    fails."""
    for spec in specs:
        check_available(spec)
    store.check()
    queue.save_sweep(home, sweep_id, source, specs)
    for spec in specs:
        queue.enqueue(spec, home, store.path, sweep_id=sweep_id)
    return [s.run_id for s in specs]


def _never_ran(run_dir: Path) -> bool:
    """A pair of a sweep that never started: its dir is gone, or it ended (cancelled while
    queued, refused, killed before the runner began) without a `started` event."""
    if not (run_dir / "spec.json").is_file():
        return True
    if queue.is_waiting(run_dir):
        return False
    events, _ = rundir.read_events(run_dir)
    if any(e.kind == "started" for e in events):
        return False
    c = queue.claimed(run_dir)
    return (c is not None and c.action == "cancel") or follow.stored_status(run_dir) is not None


def _stored_results(store: Any, sweep_id: str) -> set[str]:
    """Run ids of `sweep_id` the database holds a result of (any status but cancelled), in
    one query: runs imported from the machine that ran them count as run."""
    if not store.path.exists():
        return set()
    rows = store.query("SELECT run_id FROM runs WHERE sweep_id = ? AND status <> 'cancelled'",
                       params=[sweep_id]).rows
    return {str(r[0]) for r in rows}


def _requeue(home: Path, db: Path, spec: RunSpec, sweep_id: str) -> RunSpec:
    """`spec` queued again under `sweep_id` with a new run id (unique in this home)."""
    fresh = replace(spec, run_id=new_run_id(spec.model, spec.technique),
                    created_ns=time.time_ns())
    while (homes.runs_dir(home) / fresh.run_id).exists():
        fresh = replace(fresh, run_id=fresh.run_id + "-r")
    queue.enqueue(fresh, home, db, sweep_id=sweep_id)
    return fresh


def resume_sweep(home: Path, store: Any, token: str) -> tuple[str, list[str], int]:
    """Re-queue the runs of sweep `token` (a unique prefix ok) that never ran, under new
    run ids; (its id, every run id now, how many were re-queued). A run the database holds
    (imported from the machine that ran it) ran, whether or not its dir is here."""
    record = queue.load_sweep_record(home, token)
    sweep_id = str(record["sweep_id"])
    specs: list[RunSpec] = []
    for raw in record["specs"]:
        try:
            specs.append(RunSpec.from_dict(raw))
        except ProtocolError as e:
            raise BadInput(f"sweep {sweep_id} holds a malformed spec: {e}") from None
    stored = _stored_results(store, sweep_id)
    out: list[RunSpec] = []
    requeued = 0
    for spec in specs:
        if _never_ran(homes.runs_dir(home) / spec.run_id) and spec.run_id not in stored:
            out.append(_requeue(home, store.path, spec, sweep_id))
            requeued += 1
        else:
            out.append(spec)
    queue.save_sweep(home, sweep_id, str(record.get("source")), out)
    return sweep_id, [s.run_id for s in out], requeued


PAIR_COLUMNS = ("family", "technique", "model", "seed", "batch_size", "seq_len", "new_tokens",
                "steps", "warmup", "dataset", "params")
"""What makes two runs the same pair and repeat (runs row columns = RunSpec fields)."""


def _pair_key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    params = values.get("params") or {}
    if isinstance(params, str):
        params = json.loads(params or "{}")
    key = {k: values.get(k) for k in PAIR_COLUMNS if k != "params"}
    if key["family"] != "inference":
        key["new_tokens"] = None  # only inference decodes
    return (*key.values(), json.dumps(params, sort_keys=True))


def continue_sweep(home: Path, store: Any, sweep_id: str, source: str,
                   specs: list[RunSpec]) -> tuple[list[str], int, int]:
    """Queue under `sweep_id` each run of `specs` (a study expanded again) that has no `ok`
    run of the same pair and seed stored for that sweep and is not queued here, e.g. on
    another machine after `efficientllm import` of the parts run before; (every run id of
    the sweep now, how many were queued, how many were already stored).

    Raises:
        BadInput: The database holds no run of `sweep_id` and this home never queued it.
    """
    rows = store.query("SELECT " + ", ".join(PAIR_COLUMNS) + ", run_id FROM runs "
                       "WHERE sweep_id = ? AND status = 'ok'", params=[sweep_id]).rows \
        if store.path.exists() else []
    known = queue.sweep_ids(home)
    if not rows and sweep_id not in known:
        raise BadInput(f"no study {sweep_id!r} in {store.path} or this home: import the "
                       "database its parts were stored in first (efficientllm import FILE)")
    stored: dict[tuple[Any, ...], list[str]] = {}
    for row in rows:
        stored.setdefault(_pair_key(dict(zip(PAIR_COLUMNS, row, strict=False))),
                          []).append(row[-1])
    waiting = {_pair_key(s.to_dict()): s.run_id for s in queue.sweep_specs(home, sweep_id)
               if not _never_ran(homes.runs_dir(home) / s.run_id)}
    out: list[RunSpec] = []
    queued = done = 0
    for spec in specs:
        key = _pair_key(spec.to_dict())
        if stored.get(key):
            out.append(replace(spec, run_id=stored[key].pop()))
            done += 1
        elif key in waiting:
            out.append(replace(spec, run_id=waiting.pop(key)))
        else:
            out.append(_requeue(home, store.path, spec, sweep_id))
            queued += 1
    queue.save_sweep(home, sweep_id, source, out)
    return [s.run_id for s in out], queued, done


def follow_sweep(home: Path, store: Any, sweep_id: str, run_ids: list[str], *,
                 as_json: bool, id_key: str = "sweep_id") -> int:
    """Show a sweep's progress until every run is stored, then its table (or one JSON
    document, its id under `id_key`); 0 when every run is ok, 1 otherwise, 130 on Ctrl-C."""
    devices = max(1, len({r.device_key for r in queue.snapshot(home)}))
    last_line = [""]

    def show(p: follow.BatchProgress) -> None:
        if as_json:
            return
        now = ", ".join(r[-24:] for r in p.running) or "-"
        eta = f" · ETA {duration(p.eta_s)}" if p.eta_s is not None and p.done < p.total else ""
        line = (f"{sweep_id}: {p.done}/{p.total} stored"
                + (f" ({p.failed} not ok)" if p.failed else "") + f" · now: {now}{eta}")
        if line != last_line[0]:
            print(line, file=sys.stderr, flush=True)
            last_line[0] = line

    try:
        # runs stored elsewhere and imported (a study's earlier parts) have no run dir here
        here = [r for r in run_ids if (homes.runs_dir(home) / r).is_dir()]
        final = follow.follow_batch(home, here, show, devices=devices)
    except KeyboardInterrupt:
        goes_on(f"sweep {sweep_id}", "--all")
        return 130
    rows = []
    for run_id in run_ids:
        run = store.get_run(run_id) or {}
        rows.append({"run_id": run_id, "model": run.get("model"),
                     "technique": run.get("technique"), "device": run.get("device"),
                     "status": final.statuses.get(run_id, run.get("status")),
                     "error": run.get("error_text")})
    if as_json:
        emit_json({id_key: sweep_id, "runs": rows})
    else:
        table(["run_id", "model", "technique", "device", "status", "error"],
              [[r[k] for k in ("run_id", "model", "technique", "device", "status", "error")]
               for r in rows])
    return 0 if all(r["status"] == "ok" for r in rows) else 1


# -- queue, stop, recover ----------------------------------------------------------------------

def cmd_queue(args: argparse.Namespace) -> int:
    home = home_dir()
    rows = queue.snapshot(home)
    if args.json:
        emit_json([{"run_id": r.run_id, "device": r.device_key, "state": r.state,
                    "position": r.position, "family": r.family, "model": r.model,
                    "technique": r.technique, "steps_done": r.steps_done,
                    "total_steps": r.total_steps, "phase": r.phase, "sweep_id": r.sweep_id}
                   for r in rows])
        return 0
    pid = dispatcher.running_pid(home)
    state = f"dispatcher pid {pid}" if pid and pid > 0 else (
        "dispatcher starting" if pid else "no dispatcher (it starts with the next run)")
    if not rows:
        print(f"nothing queued or running ({state})")
        return 0
    table(["device", "#", "run_id", "state", "pair", "progress", "sweep"],
          [[r.device_key, r.position or "now", r.run_id, r.state,
            f"{r.model} x {r.technique}",
            f"{r.steps_done}/{r.total_steps} {r.phase}" if r.state == "running" else "-",
            r.sweep_id] for r in rows], title=f"queue ({state})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    home = home_dir()
    if args.all == bool(args.run_ids):
        raise BadInput("give RUN_ID... or --all")
    if args.all:
        ids = [r.run_id for r in queue.snapshot(home)]
    else:
        known = queue.known_runs(home)
        ids = [queue.resolve_id(token, known) for token in args.run_ids]
    results = queue.stop(home, ids)
    if ids:
        dispatcher.ensure(home)  # it stores the cancelled runs
    _report(results, "result", "nothing queued or running", as_json=args.json)
    return 0


def _report(pairs: list[tuple[str, str]], field: str, empty: str, *, as_json: bool) -> None:
    """`run_id: what` lines (or one JSON list of {run_id, field}), or `empty` for none."""
    if as_json:
        emit_json([{"run_id": r, field: what} for r, what in pairs])
    elif not pairs:
        print(empty)
    else:
        for run_id, what in pairs:
            print(f"{run_id}: {what}")


def cmd_recover(args: argparse.Namespace) -> int:
    home = home_dir()
    store = open_store(args, home)
    done = ingest.recover(store, home)
    if any(True for _ in queue.waiting(home)):
        dispatcher.ensure(home)  # queued runs whose dispatcher died go on
    _report(done, "status", "nothing to recover", as_json=args.json)
    return 0
