"""Commands that read the store: runs, show, sql, export, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from efficientllm_tui.commands.common import (
    SIM_MARK,
    console,
    emit_json,
    format_rows,
    home_dir,
    open_store,
    print_run,
    resolve_ids,
    run_doc,
    sim_device,
    sim_footnote,
    sql_table,
    table,
)
from efficientllm_tui.display import run_label
from efficientllm_tui.errors import BadInput, QueryError
from profiling import metric_catalog


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args, home_dir())
    if args.limit < 1:
        raise BadInput("--limit must be at least 1")
    runs = store.list_runs(family=args.family, model=args.model, technique=args.technique,
                           status=args.status, limit=args.limit)
    if args.json:
        sources = store.metric_sources([r["run_id"] for r in runs]) if runs else {}
        emit_json([{**r, "sources": sources.get(r["run_id"], {})} for r in runs])
        return 0
    if not runs:
        filters = [f"--{k} {v}" for k in ("family", "model", "technique", "status")
                   if (v := getattr(args, k)) is not None]
        stored = len(store.run_ids()) if filters else 0
        if stored:
            print(f"no run matches {' '.join(filters)} ({stored} run(s) stored; "
                  "`efficientllm runs` lists them)")
        else:
            print("no runs stored yet; try: efficientllm run -m tiny -t fp32 --device cpu")
        return 0
    cols = ["run_id", "family", "model", "technique", "device", "status", "it", "st", "tt",
            "al_s", "amu", "aec_w"]
    table(cols, [[sim_device(r) if c == "device" else r.get(c) for c in cols] for r in runs])
    sim_footnote(runs)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args, home_dir())
    (run_id,) = resolve_ids(store, home_dir(), [args.run_id])
    run = store.get_run(run_id)
    if run is None:
        raise BadInput(f"run {run_id} is not stored in {store.path} yet (see `efficientllm "
                       "queue`)")
    doc = run_doc(run, run.get("status", ""))
    from efficientllm_tui.store.scaling import scaling

    scaled = scaling(store, run_id)  # a multi-device run against its one-device twin
    if scaled is not None:
        doc["scaling"] = {"world_size": scaled.world_size, "base_run_id": scaled.base_run_id,
                          "speedup": scaled.speedup, "efficiency": scaled.efficiency}
    if args.json:
        emit_json(doc)
    else:
        print_run(doc)
        if scaled is not None:
            print(f"scaling: {scaled.speedup:.2f}x the tokens/s of one device "
                  f"({scaled.base_run_id}), efficiency {scaled.efficiency:.0%} over "
                  f"{scaled.world_size} devices")
        keys = ("family", "group_name", "device", "batch_size", "seq_len", "new_tokens", "steps",
                "warmup", "world_size", "params", "weights", "started_at", "ended_at", "host",
                "torch_version", "transformers_version")
        table(["field", "value"], [[k, doc.get(k)] for k in keys])
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    sql = _sql_text(args)
    store = open_store(args, home_dir())
    try:
        result = store.query(sql, read_only=not args.write)
    except QueryError as e:
        if not args.write and e.msg.startswith("read-only:"):
            raise QueryError(f"{e.msg}; use --write to allow it", e.title) from None
        raise
    if args.format == "table":
        sql_table(result.columns, result.types, result.rows)
    else:
        sys.stdout.write(format_rows(result.columns, result.rows, args.format))
    return 0


def _sql_text(args: argparse.Namespace) -> str:
    """The query: the argument, `-` for standard input, or `-f FILE`."""
    if args.file is not None and args.query is not None:
        raise BadInput("give the query as an argument or with -f FILE, not both")
    if args.file is None and args.query is None:
        raise BadInput("give a query: efficientllm sql \"SELECT ...\", -f FILE, or - to read "
                       "standard input")
    if args.file is not None and args.file != "-":
        path = Path(args.file).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise BadInput(f"cannot read SQL file {path}: {why}") from None
    if args.query not in (None, "-"):
        return str(args.query)
    if sys.stdin is None or sys.stdin.isatty():
        raise BadInput("`-` reads the query from standard input, but nothing is piped in")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        raise BadInput(f"cannot read the query from standard input: {e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args, home_dir())
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise BadInput(f"output {out} is a directory; give a file path")
    if not out.parent.is_dir():
        raise BadInput(f"output directory {out.parent} does not exist")
    ids = resolve_ids(store, home_dir(), args.run_ids) if args.run_ids else None
    n = store.export(out, args.format, run_ids=ids, table=args.table)
    print(f"wrote {n} rows of {args.table} to {out}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from efficientllm_tui import plot

    if args.metrics is not None and args.plot is None:
        raise BadInput("--metrics chooses the chart's panels; give --plot FILE.svg|png with it")
    plot_path = plot.check_path(args.plot) if args.plot is not None else None
    store = open_store(args, home_dir())
    run_ids = resolve_ids(store, home_dir(), args.run_ids)
    runs = []
    for rid in run_ids:
        run = store.get_run(rid)
        if run is None:
            raise BadInput(f"run {rid} is not stored in {store.path} yet")
        runs.append(run)
    chosen: list[str] = []
    if plot_path is not None:  # written before any output: a failure leaves stdout empty
        chosen = plot.choose_metrics(runs, args.metrics)
        plot.write_chart(plot_path, runs, chosen)
    board = store.leaderboard(run_ids=run_ids)
    families = {r.get("family") for r in runs}
    names = metric_catalog.ordered({n for r in runs for n in (r.get("metrics") or {})},
                                   next(iter(families)) if len(families) == 1 else None)
    if args.json:
        emit_json({"runs": [run_doc(r, r.get("status", "")) for r in runs],
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

        table(cols, [[n] + [cell(r, n) for r in runs] for n in names], title="raw metrics")
        for i, note in enumerate(notes, 1):
            console().print(f"[{i}] {note}", markup=False, highlight=False)
        if board:
            workloads = sorted({b.get("workload") or "" for b in board})
            bcols = ["run_id", "technique", "metric", "value", "score", "rank"]
            table(bcols + ["workload", "data"],
                   [[b.get(c) for c in bcols]
                    + [f"W{workloads.index(b.get('workload') or '') + 1}",
                       "SIMULATED" if b.get("simulated") else "measured"] for b in board],
                   title="paper normalisation: score in [0.1, 1] (higher is better), "
                   "rank 1 = best, ranked only within one workload")
            for i, w in enumerate(workloads, 1):
                console().print(f"W{i}: {w}", markup=False, highlight=False)
        sim_footnote(runs)
    if plot_path is not None:
        print(f"wrote a chart of {len(runs)} run(s) x {len(chosen)} metric(s) to {plot_path}",
              file=sys.stderr)
    return 0
