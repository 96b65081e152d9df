"""The CLI's everyday edges: --version, `sql -f FILE` and `sql -`, values written as the SQL
console writes them, extension failures that do not blame the database, `runs` filters that
match nothing, and the daemon's short summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from efficientllm_tui.commands.daemon import summary
from efficientllm_tui.store.db import Store

from .conftest import Cli

ROW = ("SELECT INTERVAL 90 MINUTE AS i, true AS b, NULL AS n, 1.50::DECIMAL(5,2) AS d, "
       "TIMESTAMP '2026-01-02 03:04:05' AS ts, [1, 2] AS l")


@pytest.fixture
def db(cli: Cli) -> Path:
    path = cli.home / "efficientllm.duckdb"
    with Store(path).connect():
        pass  # a write open creates the schema: an empty database
    return path


def test_version(cli: Cli) -> None:
    out = cli("--version", check=True)
    assert out.stdout == "efficientllm 0.1.0\n" and out.stderr == ""


def test_sql_reads_file_and_stdin_and_writes_values_readably(cli: Cli, db: Path,
                                                             tmp_path: Path) -> None:
    query = tmp_path / "q.sql"
    query.write_text(ROW + "\n", encoding="utf-8")
    out = cli("sql", "-f", str(query), "--format", "csv", check=True)
    assert out.stdout == ("i,b,n,d,ts,l\n"
                          '01:30:00,true,,1.50,2026-01-02 03:04:05,"[1, 2]"\n')
    piped = subprocess.run([sys.executable, "-m", "efficientllm_tui.cli", "sql", "-",
                            "--format", "json"], input=ROW, capture_output=True, text=True,
                           env=cli.env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == [{"i": "01:30:00", "b": True, "n": None, "d": 1.5,
                                         "ts": "2026-01-02 03:04:05", "l": [1, 2]}]
    table = cli("sql", ROW, check=True).stdout
    assert "│ 01:30:00 │ true │ NULL │ 1.50 │ 2026-01-02 03:04:05 │ [1, 2] │" in table
    assert "MonthDayNano" not in table
    missing = cli("sql", "-f", str(tmp_path / "nope.sql"))
    assert (missing.returncode, missing.stderr) == (
        2, f"efficientllm: error: cannot read SQL file {tmp_path / 'nope.sql'}: No such file "
           "or directory\n")
    both = cli("sql", "select 1", "-f", str(query))
    assert both.returncode == 2 and "not both" in both.stderr


def test_extension_failures_do_not_blame_the_database(cli: Cli, db: Path) -> None:
    for statement in ("INSTALL httpfs", "LOAD httpfs"):
        out = cli("sql", statement)
        assert (out.returncode, out.stderr) == (
            2, "efficientllm: error: read-only: extensions are disabled in read-only queries "
               "(INSTALL and LOAD, and the functions that would load one); use --write to "
               "allow it\n")
    loaded = cli("sql", "LOAD httpfs", "--write")  # never installed here: nothing to load
    assert loaded.returncode == 2, loaded.stderr
    assert "cannot use database" not in loaded.stderr and str(db) not in loaded.stderr
    assert "extension httpfs is not installed" in loaded.stderr


def test_runs_filter_without_match_is_not_an_empty_store(cli: Cli, db: Path) -> None:
    empty = cli("runs", "--status", "failed", check=True)
    assert empty.stdout.startswith("no runs stored yet")
    cli("sql", "--write", "INSERT INTO runs (run_id, family, model, technique, status) "
        "VALUES ('r1', 'inference', 'tiny', 'fp32', 'ok')", check=True)
    out = cli("runs", "--status", "failed", check=True)
    assert out.stdout == ("no run matches --status failed (1 run(s) stored; `efficientllm "
                          "runs` lists them)\n")


def test_daemon_status_is_a_short_summary(cli: Cli) -> None:
    out = cli("daemon", "status", check=True)
    assert out.stdout == ("profiling daemon: not running (the first run starts it, or "
                          "`efficientllm daemon start`)\n")
    started = cli("daemon", "start", "--simulate-gpu", check=True).stdout.splitlines()
    assert started[0].startswith("profiling daemon: started now, pid ")
    assert started[0].endswith(" · SIMULATED GPU")
    assert started[-1] == "the whole state: efficientllm daemon status --json"
    assert len(started) <= 7
    state = cli.json("daemon", "status", "--json")
    assert isinstance(state, dict) and state["simulated"] is True and "spool" in state
    again = cli("daemon", "status", check=True).stdout.splitlines()
    assert again[0].startswith(f"profiling daemon: running, pid {state['pid']}, up ")


def test_daemon_summary_names_problems() -> None:
    lines = summary({"pid": 7, "launched": False, "uptime_s": 125.0, "devices": ["cpu", "gpu0"],
                     "rate_hz": 10.0, "samples_taken": 12345, "idle_exit_s": 300.0,
                     "backend_states": {"nvml": {"state": "failed", "reason": "lost gpu0"}},
                     "watched": ["r1"], "subscribers": 2, "overruns": 3,
                     "spool": {"lost": 5}})
    assert lines == [
        "profiling daemon: already running, pid 7, up 2m05s",
        "sampling cpu, gpu0 at 10 Hz · 12,345 sample(s) · stops after 5m00s idle",
        "backends: nvml failed (lost gpu0)",
        "watching 1 run(s) · 2 viewer(s) subscribed",
        "problems: 3 overruns; 5 sample(s) lost by the spool",
        "the whole state: efficientllm daemon status --json",
    ]
