"""The CLI contract end to end: real runner subprocesses on `tiny`, real daemon, real DB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.slow


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_run_tiny_fp32_end_to_end(cli: Cli) -> None:
    out = cli("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one JSON document
    assert doc["status"] == "ok" and doc["technique"] == "fp32" and doc["family"] == "inference"
    m = doc["metrics"]
    for name in ("al_s", "it", "ttft_s", "tpot_s", "al_p50_s", "al_p90_s", "al_p99_s",
                 "tokens_per_s", "amu"):
        assert m.get(name) is not None and m[name] > 0, name
    assert m["al_p50_s"] <= m["al_p90_s"] <= m["al_p99_s"]
    assert doc["sources"]["amu"] == "psutil"
    counts = cli.json("sql", "select (select count(*) from samples) s, "
                      "(select count(*) from steps) st, (select count(*) from runs) r",
                      "--format", "json")
    assert counts[0]["s"] > 0 and counts[0]["st"] >= 8 and counts[0]["r"] == 1
    runs = cli.json("runs", "--json")
    assert runs[0]["run_id"] == doc["run_id"]
    shown = cli.json("show", doc["run_id"], "--json")
    assert shown["metrics"]["it"] == m["it"]
    # Ingest is idempotent: recovering again changes nothing.
    assert cli.json("recover", "--json") == []


def test_bad_inputs_get_one_line_and_exit_2(cli: Cli, tmp_path: Path) -> None:
    assert "unknown model" in _one_line_error(cli("run", "-m", "nope", "-t", "fp32"))
    assert "unknown technique" in _one_line_error(cli("run", "-m", "tiny", "-t", "int3"))
    assert "belongs to family" in _one_line_error(
        cli("run", "-m", "tiny", "-t", "lora", "-f", "inference"))
    assert "malformed --set" in _one_line_error(
        cli("run", "-m", "tiny", "-t", "fp32", "--set", "oops"))
    assert "not a readable file" in _one_line_error(
        cli("run", "-m", "tiny", "-t", "fp32", "--dataset", str(tmp_path / "missing.jsonl")))
    assert "batch_size" in _one_line_error(
        cli("run", "-m", "tiny", "-t", "fp32", "--batch-size", "0"))
    _one_line_error(cli("run", "-m", "tiny"))  # missing -t: usage error
    _one_line_error(cli("frobnicate"))
    _one_line_error(cli("sql", "selec 1"))
    _one_line_error(cli("show", "no-such-run"))
    assert not (cli.home / "runs").exists() or not any((cli.home / "runs").iterdir())


def test_corrupt_db_is_reported_and_never_overwritten(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a duckdb file\n" * 100)
    before = bad.read_bytes()
    assert "bad.duckdb" in _one_line_error(cli("sql", "select 1", "--db", str(bad)))
    _one_line_error(cli("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--db", str(bad)))
    assert bad.read_bytes() == before


def test_read_only_sql_refuses_writes(cli: Cli) -> None:
    db = str(cli.home / "x.duckdb")
    cli("sql", "create table t(a int)", "--write", "--db", db, check=True)
    assert "read-only" in _one_line_error(cli("sql", "insert into t values (1)", "--db", db))
    rows = cli.json("sql", "select count(*) n from t", "--format", "json", "--db", db)
    assert rows == [{"n": 0}]


def test_locked_db_gets_one_line(cli: Cli, tmp_path: Path) -> None:
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        env_timeout = dict(cli.env, EFFICIENTLLM_DB_LOCK_TIMEOUT_S="1")
        out = subprocess.run([sys.executable, "-m", "efficientllm_tui.cli", "sql", "select 1",
                              "--db", str(db)], capture_output=True, text=True, env=env_timeout,
                             timeout=60)
        assert "locked" in _one_line_error(out)
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_then_recover_leaves_orphaned_run_with_steps(cli: Cli) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "efficientllm_tui.cli", "run", "-m", "tiny", "-t", "fp32",
         "--device", "cpu", "--steps", "400", "--json"],
        env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)
    try:
        runs_root = cli.home / "runs"
        deadline = time.monotonic() + 60
        run_dir = None
        while time.monotonic() < deadline:
            dirs = list(runs_root.glob("*/events.jsonl")) if runs_root.exists() else []
            if dirs:
                run_dir = dirs[0].parent
                steps = [ln for ln in dirs[0].read_text().splitlines()
                         if '"kind":"step"' in ln and '"phase":"measure"' in ln]
                if len(steps) >= 3:
                    break
            time.sleep(0.2)
        assert run_dir is not None, "runner never wrote events"
        pid = json.loads((run_dir / "runner.pid").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)  # the launcher notices the death and ingests an orphan
    finally:
        if proc.poll() is None:
            proc.kill()
    cli("recover", check=True)
    run = cli.json("show", run_dir.name, "--json")
    assert run["status"] == "orphaned"
    n = cli.json("sql", f"select count(*) n from steps where run_id = '{run_dir.name}'",
                 "--format", "json")[0]["n"]
    assert n >= 3


def test_catalogs_list_every_design_id(cli: Cli) -> None:
    techniques = {t["id"]: t for t in cli.json("techniques", "--json")}
    for tid in ("fp32 bf16 fp16 int8 int4 fp8 w8a8 full freeze lora lora-plus rslora dora "
                "pissa olora ia3 vera loha lokr adalora prompt-tuning qlora mha mqa gqa mla "
                "rope absolute learned relative nope dense moe mamba rwkv pythia "
                "transformer").split():
        assert tid in techniques
    assert techniques["fp32"]["available"] is True
    models = {m["id"] for m in cli.json("models", "--json")}
    assert {"tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-7b", "llama-3.1-8b",
            "mistral-7b", "phi-3.5-mini"} <= models


def test_export_formats(cli: Cli, tmp_path: Path) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--steps", "2",
                   "--warmup", "0", "--json")
    for fmt in ("json", "csv", "parquet"):
        path = tmp_path / f"out.{fmt}"
        cli("export", doc["run_id"], "--format", fmt, "-o", str(path), check=True)
        assert path.stat().st_size > 0
    assert "unknown" in _one_line_error(
        cli("export", "nope", "--format", "csv", "-o", str(tmp_path / "x.csv"))).lower()


def test_simulated_gpu_run_is_labelled_everywhere(cli: Cli) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--simulate-gpu",
                   "--steps", "3", "--warmup", "0", "--json")
    assert doc["simulated"] is True
    for name in ("amu", "pcu"):
        assert doc["sources"][name] == "simulated" and doc["metrics"][name] is not None
    rows = cli.json("sql", "select distinct source from samples where device = 'gpu0'",
                    "--format", "json")
    assert rows == [{"source": "simulated"}]
    board = cli.json("compare", doc["run_id"], "--json")["leaderboard"]
    assert board and all(b["simulated"] for b in board)
