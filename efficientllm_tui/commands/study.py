"""`efficientllm study`: queue a shipped study (or a sweep file) with repeats, follow it,
resume it, and list the shipped ones.

A study is a sweep on the durable queue (commands.launch): its id is every run's
`sweep_id`, so `efficientllm report --study ID` finds its runs in the database alone.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from efficientllm_tui.commands.common import emit_json, home_dir, open_store, table
from efficientllm_tui.commands.launch import (
    continue_sweep,
    follow_sweep,
    on_ray,
    queue_sweep,
    resume_sweep,
)
from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import dispatcher
from efficientllm_tui.runs import study as studies
from efficientllm_tui.runs.sweep import expand


def cmd_study(args: argparse.Namespace) -> int:
    if args.list:
        if args.name is not None or args.resume is not None:
            raise BadInput("--list takes no study NAME and no --resume")
        return _list(as_json=args.json)
    home = home_dir()
    store = open_store(args, home)
    if args.resume is not None and args.name is not None:
        # the study again, less what its id already stored: the next part on any machine
        name, source, sweep = studies.load(args.name)
        specs = expand(sweep, args.repeats, args.device)
        study_id = args.resume
        run_ids, queued, done = continue_sweep(home, store, study_id, source, specs)
        if not args.json:
            print(f"study {name} ({study_id}): {done} of {len(specs)} run(s) stored, "
                  f"{queued} queued now, {len(specs) - done - queued} already queued",
                  file=sys.stderr)
    elif args.resume is not None:
        if args.repeats is not None or args.device is not None:
            raise BadInput("--repeats and --device apply when a study is queued, not to "
                           "--resume (it re-queues the runs as they were)")
        study_id, run_ids, requeued = resume_sweep(home, store, args.resume)
        if not args.json:
            print(f"study {study_id}: re-queued {requeued} run(s) that never ran; "
                  f"{len(run_ids) - requeued} kept", file=sys.stderr)
        name = None
    else:
        if args.name is None:
            raise BadInput("give a study NAME or FILE.toml (`efficientllm study --list` "
                           "shows the shipped ones), or --resume STUDY_ID")
        name, source, sweep = studies.load(args.name)
        specs = expand(sweep, args.repeats, args.device)
        study_id = studies.study_id(name)
        if args.ray:  # every pair a job on the cluster (efficientllm_tui.runs.ray_jobs)
            return on_ray(args, home, store, study_id, source, specs, id_key="study_id")
        run_ids = queue_sweep(home, store, study_id, source, specs)
        if not args.json:
            repeats = args.repeats if args.repeats is not None else sweep.repeats
            print(f"study {name}: queued {len(run_ids)} run(s) ({len(sweep.pairs)} pair(s) x "
                  f"{repeats} repeat(s)) as {study_id}", file=sys.stderr)
    dispatcher.ensure(home)
    hint = f"efficientllm report --study {study_id} -o DIR"
    if not args.follow:
        if args.json:
            emit_json({"study_id": study_id, "name": name, "run_ids": run_ids,
                       "queued": True})
        else:
            print(f"{study_id}\nfollow: efficientllm study --resume {study_id} --follow · "
                  f"list: efficientllm queue · report: {hint}")
        return 0
    code = follow_sweep(home, store, study_id, run_ids, as_json=args.json, id_key="study_id")
    if not args.json and code != 130:
        print(f"report: {hint}", file=sys.stderr)
    return code


def _list(*, as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    for name in studies.shipped():
        try:
            sweep = studies.load_shipped(name)
        except BadInput as e:  # say which is broken, and list the others
            rows.append({"name": name, "pairs": None, "repeats": None, "runs": None,
                         "description": f"cannot be queued here: {e}"})
            continue
        rows.append({"name": name, "pairs": len(sweep.pairs), "repeats": sweep.repeats,
                     "runs": len(sweep.pairs) * sweep.repeats,
                     "description": sweep.description})
    if as_json:
        emit_json(rows)
        return 0

    table(["name", "pairs", "repeats", "runs", "description"],
          [[r["name"], r["pairs"], r["repeats"], r["runs"], r["description"] or ""]
           for r in rows], title="shipped studies (efficientllm study NAME)")
    return 0
