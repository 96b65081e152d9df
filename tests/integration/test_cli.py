"""The CLI contract end to end: real runner subprocesses on `tiny`, real daemon, real DB."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from efficientllm_tui.store.schema import METRIC_DIRECTIONS
from profiling import metrics as pm
from profiling.backends.energy import energy_counter
from profiling.sample import Sample
from runners.protocol import NO_PEAK_NOTE, RANDOM_WEIGHTS_NOTE

from .conftest import Cli

pytestmark = pytest.mark.slow


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def _rows(cli: Cli, sql: str) -> list[dict[str, Any]]:
    rows = cli.json("sql", sql, "--format", "json")
    assert isinstance(rows, list)
    return rows


def _events(cli: Cli, run_id: str) -> list[dict[str, Any]]:
    path = cli.home / "runs" / run_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sampled(cli: Cli, run_id: str, device: str) -> tuple[dict[str, float | None], list[Sample]]:
    """AMU, AMU GiB, PCU and sample coverage of a stored run, recomputed with
    profiling.metrics from its stored samples of `device` over its stored measure window."""
    (window,) = _rows(cli, f"select t0_ns, t1_ns from windows where run_id = '{run_id}' "
                           "and name = 'measure'")
    samples = [Sample.from_dict(r) for r in _rows(
        cli, f"select * from samples where run_id = '{run_id}' and device = '{device}' "
             "order by t_ns")]
    assert samples, f"no samples of {device}"
    t0, t1 = window["t0_ns"], window["t1_ns"]
    times = [s.t_ns for s in samples]
    gap = pm.sample_gap_ns(times)
    started = next(e for e in _events(cli, run_id) if e["kind"] == "started")
    n_cpus = int(started.get("cpu_count") or os.cpu_count() or 1)
    frac, gib = pm.amu(samples, t0, t1, max_gap_ns=gap)
    pcu, _ = pm.pcu(samples, t0, t1, n_cpus=n_cpus, max_gap_ns=gap)
    covered, _ = pm.coverage(times, t0, t1, gap)
    return {"amu": frac, "amu_gib": gib, "pcu": pcu, "sample_coverage": covered}, samples


def test_run_tiny_fp32_end_to_end(cli: Cli) -> None:
    out = cli("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one JSON document
    assert doc["status"] == "ok" and doc["technique"] == "fp32" and doc["family"] == "inference"
    m, rid, info = doc["metrics"], doc["run_id"], doc["info"]
    assert doc["units"]["it"] == "tokens/s" and doc["units"]["amu"] == "fraction"
    # Latency and throughput: the stored measured steps and window, recomputed.
    steps = _rows(cli, f"select latency_s, ttft_s, tokens from steps where run_id = '{rid}' "
                       "and phase = 'measure' order by step")
    assert len(steps) == doc["steps"] == info["measured_requests"]
    latency = pm.latency_stats([s["latency_s"] for s in steps])
    for name, key in (("al_s", "mean"), ("al_p50_s", "p50"), ("al_p90_s", "p90"),
                      ("al_p99_s", "p99")):
        assert m[name] == pytest.approx(latency[key], rel=1e-12), name
    assert m["ttft_s"] == pytest.approx(sum(s["ttft_s"] for s in steps) / len(steps))
    generated = sum(s["tokens"] for s in steps)
    assert generated == doc["steps"] * doc["batch_size"] * doc["new_tokens"]
    assert m["it"] == m["tokens_per_s"] == pytest.approx(generated / info["measure_s"])
    assert m["tpot_s"] == pytest.approx(
        sum(s["latency_s"] - s["ttft_s"] for s in steps) / len(steps) / (doc["new_tokens"] - 1))
    # AMU, PCU and their coverage: recomputed from the stored samples of the window.
    recomputed, samples = _sampled(cli, rid, "cpu")
    for name, value in recomputed.items():
        assert m[name] == pytest.approx(value, rel=1e-9), name
    assert 0 < m["amu"] < 1 and doc["sources"]["amu"] == "psutil"
    assert doc["pcu_source"] == "psutil"
    counts = _rows(cli, "select (select count(*) from samples) s, "
                        "(select count(*) from steps) st, (select count(*) from runs) r")
    assert counts == [{"s": len(samples), "st": doc["warmup"] + 2 * doc["steps"], "r": 1}]
    runs = cli.json("runs", "--json")
    assert runs[0]["run_id"] == rid
    shown = cli.json("show", rid, "--json")
    assert shown["metrics"] == m and shown["notes"] == doc["notes"]
    # Ingest is idempotent: recovering again changes nothing.
    assert cli.json("recover", "--json") == []


def test_random_weights_store_no_quality_and_every_null_says_why(cli: Cli) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "int8", "--device", "cpu", "--steps", "2",
                   "--warmup", "0", "--json")
    assert isinstance(doc, dict) and doc["status"] == "ok" and doc["weights"] == "random"
    rid, m = doc["run_id"], doc["metrics"]
    for name in ("eval_ppl", "reference_ppl", "mcr"):
        assert (m[name], doc["sources"][name], doc["notes"][name]) == (
            None, "none", RANDOM_WEIGHTS_NOTE), name
    stored = _rows(cli, f"select name, value, source, note from metrics where run_id = '{rid}' "
                        "and name in ('eval_ppl', 'mcr', 'reference_ppl') order by name")
    assert stored == [{"name": n, "value": None, "source": "none", "note": RANDOM_WEIGHTS_NOTE}
                      for n in ("eval_ppl", "mcr", "reference_ppl")]
    # the size side of MCR stands: int8 weights against the fp32 original
    assert m["compression_ratio"] == m["reference_weight_bytes"] / m["weight_bytes"] > 2
    # The leaderboard ranks exactly the run's non-NULL leaderboard metrics: no quality.
    board = cli.json("compare", rid, "--json")["leaderboard"]
    ranked = {n for n in METRIC_DIRECTIONS if m.get(n) is not None}
    assert {"al_s", "it"} <= ranked and not ranked & {"mcr", "eval_ppl"}
    assert sorted(b["metric"] for b in board) == sorted(ranked)
    view = _rows(cli, f"select metric from leaderboard where run_id = '{rid}'")
    assert sorted(r["metric"] for r in view) == sorted(ranked)
    # `show` gives every NULL its reason, as stored.
    shown = cli.json("show", rid, "--json")
    nulls = {n for n, v in shown["metrics"].items() if v is None}
    assert {"eval_ppl", "mcr", "mfu", "peak_allocated_gib"} <= nulls
    assert set(shown["notes"]) >= nulls
    for name in nulls:
        assert shown["sources"][name] == "none" and shown["notes"][name].strip(), name
    assert shown["notes"]["mfu"] == NO_PEAK_NOTE
    counter = energy_counter("cpu")
    if counter.reader is None:  # this CPU has no RAPL: the counter's reason, run-wide too
        assert {"energy_j", "aec_w", "j_per_token"} <= nulls
        assert shown["notes"]["energy_j"] == shown["energy_note"] == counter.note


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
    assert isinstance(doc, dict)
    want = {"run_id": doc["run_id"], "technique": "fp32", "al_s": doc["metrics"]["al_s"],
            "it": doc["metrics"]["it"], "mcr": None}  # one run_metrics row, NULL kept NULL
    for fmt in ("json", "csv", "parquet"):
        path = tmp_path / f"out.{fmt}"
        out = cli("export", doc["run_id"], "--format", fmt, "-o", str(path), check=True)
        assert f"wrote 1 rows of run_metrics to {path}" in out.stderr
        if fmt == "json":
            rows = json.loads(path.read_text())
        elif fmt == "csv":
            with path.open(newline="") as f:
                rows = [{k: (float(v) if k in ("al_s", "it") else v or None) for k, v in r.items()}
                        for r in csv.DictReader(f)]
        else:
            rows = pq.read_table(path).to_pylist()
        assert [{k: r[k] for k in want} for r in rows] == [want], fmt
    assert _one_line_error(
        cli("export", "nope", "--format", "csv", "-o", str(tmp_path / "x.csv"))
    ) == "efficientllm: error: no run 'nope'"


def test_simulated_gpu_run_is_labelled_everywhere(cli: Cli) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--simulate-gpu",
                   "--steps", "3", "--warmup", "0", "--json")
    assert doc["simulated"] is True
    recomputed, _ = _sampled(cli, doc["run_id"], "gpu0")
    for name in ("amu", "amu_gib", "pcu", "sample_coverage"):
        assert doc["sources"][name] == "simulated", name
        assert doc["metrics"][name] == pytest.approx(recomputed[name], rel=1e-9), name
    assert 0 < doc["metrics"]["amu"] < 1 and 0 < doc["metrics"]["pcu"] <= 1
    rows = cli.json("sql", "select distinct source from samples where device = 'gpu0'",
                    "--format", "json")
    assert rows == [{"source": "simulated"}]
    board = cli.json("compare", doc["run_id"], "--json")["leaderboard"]
    assert board and all(b["simulated"] for b in board)
