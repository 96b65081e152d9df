"""`efficientllm import`: merge runs from exports or other efficientllm databases into this
one (store.merge), in one transaction, saying run by run what happened."""

from __future__ import annotations

import argparse
import sys

from efficientllm_tui.commands.common import emit_json, home_dir, open_store


def cmd_import(args: argparse.Namespace) -> int:
    store = open_store(args, home_dir())
    report = store.import_files(args.files, replace=args.replace)
    if args.json:
        emit_json({"db": str(store.path), "imported": list(report.imported),
                   "replaced": list(report.replaced), "skipped": list(report.skipped),
                   "rows": report.rows, "files": list(report.files)})
        return 0
    for line in report.files:
        print(line, file=sys.stderr)
    print(f"imported {len(report.imported)} run(s), replaced {len(report.replaced)}, "
          f"skipped {len(report.skipped)} already stored"
          + ("" if report.replaced or not report.skipped else " (--replace replaces them)")
          + f" into {store.path}")
    for run_id in report.skipped:
        print(f"  skipped {run_id}: already stored")
    return 0
