"""The `efficientllm` command line (DESIGN.md section 8): one parser, one error path.

Exit codes: 0 done; 1 the run itself failed (recorded in the DB with its reason); 2 bad
usage or bad input (one line on stderr, never a traceback). `--json` prints exactly one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from efficientllm_tui.errors import BadInput, EfficientLLMError

PROG = "efficientllm"
HANDLERS = {"tui": "tui", "run": "launch", "sweep": "launch", "study": "study",
            "import": "merge", "queue": "launch",
            "stop": "launch", "recover": "launch", "runs": "reads", "show": "reads",
            "sql": "reads", "export": "reads", "compare": "reads", "models": "catalog",
            "techniques": "catalog", "daemon": "daemon", "eval": "evaluate",
            "report": "report", "serve": "serve"}
"""Which module of efficientllm_tui.commands handles each command (`cmd_<name>`)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see `{self.prog} --help`)")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH",
                   help="database file (default: DATA_DIR/efficientllm.duckdb)")


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run every pair as a Ray job on this cluster (its dashboard address, "
                   "e.g. http://HEAD:8265) instead of the local queue; needs the `ray` extra")
    p.add_argument("--ray-timeout", type=float, metavar="S",
                   help="with --ray: stop jobs still going after S seconds (default: none)")


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib import metadata

        try:
            version = metadata.version("efficientllm-tui")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed as a package)"
        print(f"{PROG} {version}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Measure what LLM efficiency techniques cost and buy "
                     "on your GPU; live dashboard, run history in DuckDB.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("tui", help="open the dashboard (default)")
    _add_db(p)

    p = sub.add_parser("run", help="run one model x technique pair and store it")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-t", "--technique", required=True)
    p.add_argument("-f", "--family", choices=("inference", "finetuning", "pretraining"))
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda:N | a GPU list cuda:0,cuda:1 (one process each)")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="training runs: N processes under torchrun, one device each (N GPUs "
                   "from --device on; with --device cpu, N CPU processes over gloo)")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="training runs on N GPUs (--world-size N on a GPU device)")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--dataset", metavar="PATH")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="technique parameter, repeatable")
    p.add_argument("--simulate-gpu", action="store_true",
                   help="profile a simulated GPU (for demos; labelled simulated everywhere)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    _add_db(p)

    p = sub.add_parser("eval", help="score a stored run's model on more quality tasks "
                       "(its cost is not measured again)")
    p.add_argument("run_id", metavar="RUN_ID", help="id, unique prefix, or last")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="quality=TASKS (added to those the run scored), quality_items=N")
    p.add_argument("--device", help="cpu | cuda:N (default: the run's own device)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    _add_db(p)

    p = sub.add_parser("sweep", help="queue a matrix of model x technique pairs (TOML)")
    p.add_argument("file", metavar="FILE.toml", nargs="?")
    p.add_argument("--follow", action="store_true",
                   help="show the batch's progress until every run is stored")
    p.add_argument("--resume", metavar="SWEEP_ID",
                   help="re-queue the runs of a sweep that never ran (unique prefix ok)")
    _add_ray(p)
    p.add_argument("--json", action="store_true")
    _add_db(p)

    p = sub.add_parser("study", help="queue a shipped study (paper, ci-tiny) or a sweep file "
                       "with repeats; every run tagged with the study id")
    p.add_argument("name", metavar="NAME|FILE", nargs="?")
    p.add_argument("--list", action="store_true", help="list the shipped studies")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="runs per pair, seeds seed, seed+1, ... (default: the study's)")
    p.add_argument("--device", help="auto | cpu | cuda:N for every run (default: the study's)")
    p.add_argument("--follow", action="store_true",
                   help="show the study's progress until every run is stored")
    p.add_argument("--resume", metavar="STUDY_ID",
                   help="re-queue the runs of a study that never ran (unique prefix ok); with "
                        "NAME, queue what the database has not stored for that id (the next "
                        "part, on any machine, after `efficientllm import`)")
    _add_ray(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    _add_db(p)

    p = sub.add_parser("import", help="merge runs into the database from an export "
                       "(parquet, json, csv) or another efficientllm database file")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--replace", action="store_true",
                   help="replace runs already stored under the same run id (default: skip)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    _add_db(p)

    p = sub.add_parser("queue", help="what is queued and running, per device")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stop", help="stop runs: queued ones leave the queue, running ones end")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID",
                   help="run ids, unique prefixes, or `last`")
    p.add_argument("--all", action="store_true", help="every queued and running run")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--family")
    p.add_argument("--model")
    p.add_argument("--technique")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    _add_db(p)

    p = sub.add_parser("show", help="one run with its metrics")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    _add_db(p)

    p = sub.add_parser("sql", help="run SQL against the database (read-only unless --write)")
    p.add_argument("query", nargs="?", metavar="QUERY",
                   help="the SQL; `-` reads it from standard input")
    p.add_argument("-f", "--file", metavar="FILE", help="read the SQL from FILE")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--write", action="store_true", help="allow statements that modify the DB")
    _add_db(p)

    p = sub.add_parser("export", help="export runs to json, csv or parquet")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--format", choices=("json", "csv", "parquet"), required=True)
    p.add_argument("-o", "--output", required=True, metavar="PATH")
    p.add_argument("--table", default="run_metrics",
                   choices=("run_metrics", "runs", "metrics", "steps", "samples", "windows",
                            "events", "leaderboard"))
    _add_db(p)

    p = sub.add_parser("compare", help="runs side by side with the paper's scores and ranks")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--plot", metavar="FILE.svg|png",
                   help="also write a chart (SVG or PNG): one panel per metric, one bar per run")
    p.add_argument("--metrics", metavar="A,B,C",
                   help="the chart's metrics, comma-separated (default: every stored one)")
    p.add_argument("--json", action="store_true")
    _add_db(p)

    p = sub.add_parser("report", help="a study's tables, ranks beside the paper's, Kendall tau "
                       "and charts, as HTML + Markdown in a folder")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="ids, unique prefixes, or last")
    p.add_argument("--study", metavar="ID", help="the runs a study (sweep) queued; prefix ok")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    _add_db(p)

    for name, text in (("models", "the model catalog"), ("techniques", "the technique catalog")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("recover", help="ingest finished or orphaned run dirs")
    p.add_argument("--json", action="store_true")
    _add_db(p)

    p = sub.add_parser("serve", help="the same app in a browser (textual-serve), on this "
                       "machine only unless --public; reach it with ssh -L 8000:localhost:8000")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--public", action="store_true",
                   help="allow a host other machines can reach (no login: prints a warning)")
    _add_db(p)

    p = sub.add_parser("daemon", help="the profiling daemon")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--rate-hz", type=float, default=10.0)
    p.add_argument("--idle-exit-s", type=float, default=300.0)
    p.add_argument("--simulate-gpu", action="store_true",
                   help="sample simulated GPUs instead of NVML (labelled simulated everywhere)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)  # the data dir holds this user's runs: nothing made here is for others
    try:
        args = build_parser().parse_args(argv)
        command = args.command or "tui"
        # Imported here: keeps `--help` and usage errors instant.
        module = importlib.import_module(f"efficientllm_tui.commands.{HANDLERS[command]}")
        handler = getattr(module, "cmd_" + command.replace("-", "_"))
        if command == "tui" and not hasattr(args, "db"):
            args.db = None
        return int(handler(args) or 0)
    except EfficientLLMError as e:
        _say_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `efficientllm runs | head`: quietly stop writing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _say_error(e: EfficientLLMError) -> None:
    print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)


def one_line(text: str) -> str:
    """One printable line, whatever the message held: whitespace runs become one space and
    control characters (a run id or file name with terminal escape sequences in it) are shown
    escaped, never sent to the terminal."""
    flat = " ".join(text.split())
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in flat)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
