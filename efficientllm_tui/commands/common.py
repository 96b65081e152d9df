"""What every command shares: the data dir, the store, tables and JSON on stdout, and how one
run is printed (its metrics with the reason beside every missing one)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficientllm_tui.display import contention, sql_cell, sql_json
from efficientllm_tui.display import num as fmt
from efficientllm_tui.errors import BadInput
from profiling import home as homes
from profiling import metric_catalog

if TYPE_CHECKING:  # DuckDB, pyarrow and the runners' catalog stay off `efficientllm tui`'s path
    from efficientllm_tui.store.db import Store
    from runners.protocol import RunSpec

SIM_MARK = "(SIMULATED GPU)"
"""What `runs` and `compare` tables add to a simulated run's device or name (DESIGN.md 4)."""


def home_dir() -> Path:
    """The data dir, made if missing, readable by this user only (runs, samples and the
    database are private: 0700, and files made under it 0600 through the umask)."""
    home = homes.data_dir()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise BadInput(f"cannot create data dir {home}: {e.strerror or e}") from None
    if not home.is_dir():
        raise BadInput(f"data dir {home} is not a directory")
    try:
        if home.stat().st_uid == os.getuid() and home.stat().st_mode & 0o077:
            home.chmod(0o700)
    except OSError:
        pass  # not ours to change; files are still made private by the umask
    return home


def open_store(args: argparse.Namespace, home: Path) -> Store:
    from efficientllm_tui.store.db import Store

    raw = os.environ.get("EFFICIENTLLM_DB_LOCK_TIMEOUT_S", "30")
    try:
        timeout_s = max(0.0, float(raw))
    except ValueError:
        raise BadInput(f"EFFICIENTLLM_DB_LOCK_TIMEOUT_S must be seconds, got {raw!r}") from None
    return Store(db_path(args, home), lock_timeout_s=timeout_s)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole rows (scripts grep run ids); a terminal gets its own width.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, width=width)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold", no_wrap=c == "run_id")
    for r in rows:  # cells are data, never markup: `[Errno 2]` or `[[matrix]]` print as is
        table.add_row(*(Text(fmt(v)) for v in r))
    console().print(table)


def emit_json(doc: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Render SQL result rows as csv or json text (tables: `sql_table`). Values are written
    as display.sql_cell / sql_json write them: booleans true/false, NULL an empty CSV field
    or JSON null, INTERVAL and TIMESTAMP as DuckDB spells them."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else sql_cell(v, exact=True) for v in r]
                          for r in rows])
        return buf.getvalue()
    return json.dumps([{c: sql_json(v) for c, v in zip(columns, r, strict=False)}
                       for r in rows], indent=2, default=str) + "\n"


def sql_table(columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]
              ) -> None:
    """Print a SQL result as a table: values as the SQL console's grid shows them (NULL,
    true/false, DuckDB's spelling of INTERVAL & co), numbers right-aligned, no markup."""
    from rich.table import Table
    from rich.text import Text

    out = Table(header_style="bold")
    for i, c in enumerate(columns):
        kind = types[i] if i < len(types) else ""
        out.add_column(Text(c), overflow="fold", justify="right" if _numeric(kind) else "left")
    for r in rows:
        out.add_row(*(Text(sql_cell(v), style="dim" if v is None else "") for v in r))
    console().print(out)


def _numeric(duckdb_type: str) -> bool:
    head = duckdb_type.split("(")[0].upper()
    return head.endswith("INT") or head in ("DOUBLE", "FLOAT", "REAL", "DECIMAL", "HUGEINT",
                                            "UHUGEINT", "BIGINT", "SMALLINT", "TINYINT")


def db_path(args: argparse.Namespace, home: Path) -> Path:
    from profiling.home import default_db_path

    return Path(args.db).expanduser() if getattr(args, "db", None) else default_db_path(home)


def resolve_ids(store: Store, home: Path, tokens: Sequence[str]) -> list[str]:
    """Run ids from what a user typed: ids, unique prefixes, or `last` (the newest run),
    over the stored runs and the run dirs of the data dir."""
    from efficientllm_tui.runs import queue

    known = {**queue.known_runs(home), **store.run_created()}
    return [queue.resolve_id(token, known) for token in tokens]


def check_available(spec: RunSpec) -> None:
    from efficientllm_tui.runs import specs

    if not specs.technique_available(spec.technique):
        raise BadInput(f"technique {spec.technique!r} ({spec.family}) is not implemented yet; "
                       "see `efficientllm techniques`")
    if not specs.resolve_model(spec.model).available:
        raise BadInput(f"model {spec.model!r} is not available yet; see `efficientllm models`")


def run_doc(run: dict[str, Any], status: str) -> dict[str, Any]:
    metrics = run.get("metrics") or {}
    doc = {k: v for k, v in run.items() if k != "metrics"}
    doc["status"] = run.get("status", status)
    doc["metrics"] = {name: v[0] for name, v in sorted(metrics.items())}
    doc["units"] = {name: v[1] for name, v in sorted(metrics.items())}
    doc["sources"] = {name: v[2] for name, v in sorted(metrics.items())}
    doc["notes"] = dict(sorted((run.get("metric_notes") or {}).items()))
    doc.pop("metric_notes", None)
    return doc


def print_run(doc: dict[str, Any]) -> None:
    head = (f"{doc.get('run_id')}  {doc.get('family')}  {doc.get('model')} x "
            f"{doc.get('technique')}  on {doc.get('device')}  status {doc.get('status')}")
    if doc.get("simulated"):
        head += "  [SIMULATED GPU DATA]"
    console().print(head)
    if doc.get("error_text"):
        console().print(f"error ({doc.get('error_type')}): {doc.get('error_text')}")
    if doc.get("workload"):
        console().print(f"workload (ranked only within it): {doc['workload']}")
    shared = contention(doc) or "unknown — not recorded for this run"
    console().print(f"contended: {shared}", markup=False)
    notes = doc.get("notes") or {}
    # The family's headline metrics first, then the catalog's order.
    rows = [[n, doc["metrics"][n], doc["units"].get(n), doc["sources"].get(n), notes.get(n)]
            for n in metric_catalog.ordered(list(doc["metrics"]), doc.get("family"))]
    if rows:
        table(["metric", "value", "unit", "source", "why missing / note"], rows)


def sim_device(run: dict[str, Any]) -> Any:
    """The device column of a run: `cpu (SIMULATED GPU)` when its GPU data was simulated."""
    device = run.get("device")
    return f"{fmt(device)} {SIM_MARK}" if run.get("simulated") else device


def sim_footnote(runs: list[dict[str, Any]]) -> None:
    """One line under a table that shows simulated runs, saying what the marker means."""
    if any(r.get("simulated") for r in runs):
        console().print(f"{SIM_MARK}: AMU, PCU and energy of these runs come from a "
                         "simulated GPU (`--simulate-gpu`), not from hardware", style="bold red")
