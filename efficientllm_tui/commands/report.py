"""`efficientllm report`: a study's (or the given runs') tables, ranks beside the paper's,
Kendall tau and charts, written as a folder (index.html, report.md, charts/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from efficientllm_tui.commands.common import emit_json, home_dir, open_store, resolve_ids
from efficientllm_tui.errors import BadInput


def cmd_report(args: argparse.Namespace) -> int:
    from efficientllm_tui.report.build import build_report
    from efficientllm_tui.report.write import check_dir, write_report

    if args.study is not None and args.run_ids:
        raise BadInput("give --study ID or RUN_IDs, not both")
    if args.study is None and not args.run_ids:
        raise BadInput("no runs selected: give --study ID or one or more RUN_IDs")
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; give a folder for the report")
    store = open_store(args, home_dir())
    ids = resolve_ids(store, home_dir(), args.run_ids) if args.run_ids else None
    report = build_report(store, study=args.study, run_ids=ids)
    paths = write_report(report, check_dir(out))
    if args.json:
        emit_json({"files": [str(p) for p in paths], "report": report.to_dict()})
    else:
        n = sum(len(s.workloads) for s in report.sections)
        print(f"wrote a report of {report.run_count} run(s) in {n} workload(s) to "
              f"{out / 'index.html'} and {out / 'report.md'} ({len(paths) - 2} chart files)")
        for s in report.skipped:
            print(f"left out {s.run_id}: {s.status}: {s.reason}", file=sys.stderr)
    return 0
