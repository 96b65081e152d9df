"""`efficientllm eval RUN_ID` end to end (CPU, SmolLM2-135M): a stored inference run and a
stored fine-tuning run scored on more tasks later, their cost untouched; what eval refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runners.techniques import scoring
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401

from .conftest import Cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not scoring.available(), reason="lm-eval not installed")]

FIRST, MORE = "ellm_boolean_expressions", "ellm_object_counting"
ITEMS = "8"


def _show(cli: Cli, run_id: str) -> dict[str, Any]:
    doc = cli.json("show", run_id, "--json")
    assert isinstance(doc, dict)
    return doc


def _sql(cli: Cli, query: str) -> list[dict[str, Any]]:
    rows = cli.json("sql", query, "--format", "json")
    assert isinstance(rows, list)
    return rows


def test_eval_adds_tasks_to_a_stored_inference_run(smollm2_cache: Path,  # noqa: F811
                                                   cli: Cli) -> None:
    run = cli.json("run", "-m", MODEL, "-t", "int8", "--steps", "1", "--warmup", "0",
                   "--seq-len", "16", "--new-tokens", "4", "--set", "threads=1",
                   "--set", "eval_tokens=64", "--set", f"quality={FIRST}",
                   "--set", f"quality_items={ITEMS}", "--json", timeout=300)
    assert isinstance(run, dict) and run["status"] == "ok"
    rid = run["run_id"]
    before = _show(cli, rid)["metrics"]
    assert f"acc_{MORE}" not in before

    out = cli("eval", rid[:12], "--set", f"quality={MORE}", "--set", f"quality_items={ITEMS}",
              "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["run_id"] == rid and doc["eval"]["status"] == "ok"
    assert doc["eval"]["quality"] == f"{FIRST},{MORE}"  # the run's tasks and the new one
    after = _show(cli, rid)
    m = after["metrics"]
    # the same model, the same items: the task scored before scores the same again
    assert m[f"acc_{FIRST}"] == before[f"acc_{FIRST}"]
    assert m["quality"] == pytest.approx((m[f"acc_{FIRST}"] + m[f"acc_{MORE}"]) / 2)
    assert after["sources"][f"acc_{MORE}"] == "lm-eval"
    # MCR now from both tasks on the quantized model and its fp32 reference
    ref_quality = m["quality"] * m["compression_ratio"] / m["mcr"]
    assert 0 < ref_quality <= 1
    assert m["compression_ratio"] == before["compression_ratio"]
    # the cost is the measured run's, untouched
    for name in ("it", "al_s", "energy_j", "amu"):
        assert m.get(name) == before.get(name), name
    assert set(after["info"]["quality_tasks"]) == {FIRST, MORE}
    assert [e["eval_id"] for e in after["info"]["evals"]] == [doc["eval"]["eval_id"]]
    events = _sql(cli, f"SELECT kind, payload->>'eval_id' AS eval_id FROM events "
                       f"WHERE run_id = '{rid}' AND kind = 'eval'")
    assert events == [{"kind": "eval", "eval_id": doc["eval"]["eval_id"]}]
    windows = _sql(cli, f"SELECT name FROM windows WHERE run_id = '{rid}' "
                        "AND name LIKE 'eval %' ORDER BY name")
    assert [w["name"].rsplit(": ", 1)[1] for w in windows] == ["quality"]
    # the eval job is no run of its own: the runs table holds only the measured run
    assert [r["run_id"] for r in _sql(cli, "SELECT run_id FROM runs")] == [rid]


def test_eval_restores_what_a_fine_tuning_run_trained(smollm2_cache: Path,  # noqa: F811
                                                       cli: Cli) -> None:
    common = ("-m", MODEL, "-t", "lora", "--steps", "2", "--warmup", "0", "--seq-len", "32",
              "--batch-size", "2", "--set", "threads=1", "--set", "eval_batches=1", "--json")
    run = cli.json("run", *common, timeout=300)
    assert isinstance(run, dict) and run["status"] == "ok"
    rid = run["run_id"]
    before = _show(cli, rid)["metrics"]
    assert "quality" not in before
    out = cli("eval", rid, "--set", f"quality={FIRST}", "--set", f"quality_items={ITEMS}",
              "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    m = _show(cli, rid)["metrics"]
    assert m["quality"] == m[f"acc_{FIRST}"] and m["base_quality"] is not None
    assert m["st"] == before["st"] and m["loss"] == before["loss"]

    # save=false kept nothing to restore: refused before any job is queued
    kept_nothing = cli.json("run", *common, "--set", "save=false", timeout=300)
    assert isinstance(kept_nothing, dict)
    out = cli("eval", kept_nothing["run_id"])
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "kept nothing it trained" in out.stderr and "save=false" in out.stderr


def test_eval_refuses_what_it_cannot_score(cli: Cli) -> None:
    run = cli.json("run", "-m", "tiny", "-t", "fp32", "--steps", "1", "--warmup", "0",
                   "--seq-len", "8", "--new-tokens", "2", "--json", timeout=300)
    assert isinstance(run, dict)
    cases = {
        ("eval", run["run_id"]): "has random weights: no quality signal to score",
        ("eval", run["run_id"], "--set", "rank=4"): "eval takes only --set quality and "
                                                    "quality_items",
        ("eval", "nosuchrun"): "no run 'nosuchrun'",
    }
    for args, message in cases.items():
        out = cli(*args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not list((cli.home / "runs").glob("eval-*"))  # nothing was queued
