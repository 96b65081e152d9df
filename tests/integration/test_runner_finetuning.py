"""`python -m runners RUN_DIR` on the finetuning family as a real subprocess (tiny, CPU), and
`efficientllm run -f finetuning` end to end into the database."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.models import catalog
from runners.protocol import (
    EVENTS_FILE,
    NO_PEAK_NOTE,
    RANDOM_WEIGHTS_NOTE,
    Event,
    RunResult,
    RunSpec,
)

from . import checks
from .conftest import Cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(seq_len=48, batch_size=2, steps=3, warmup=1)


def _launch(home: Path, run_id: str, **spec: Any) -> tuple[Path, subprocess.Popen[bytes]]:
    fields: dict[str, Any] = dict(run_id=run_id, family="finetuning", technique="lora",
                                  model="tiny", device="cpu", **SMALL)
    params = {"threads": 1, "eval_batches": 1, **spec.pop("params", {})}
    fields.update(spec)
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(RunSpec(params=params, **fields).to_json())
    env = dict(os.environ, EFFICIENTLLM_HOME=str(home))
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return run_dir, proc


def _events(run_dir: Path) -> list[Event]:
    return [Event.from_json(x) for x in (run_dir / EVENTS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """lora and full runs plus a malformed dataset, all started at once."""
    bad = tmp_path_factory.mktemp("data") / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "respons": "b"}\n')
    cases: dict[str, dict[str, Any]] = {
        "lora": {}, "full": {"technique": "full"},
        "bad-data": {"dataset": str(bad)},
        "bad-param": {"params": {"rank": -1}},
    }
    started = {}
    for name, extra in cases.items():
        home = tmp_path_factory.mktemp(name)
        started[name] = _launch(home, f"ft-{name}", **extra)
    return {name: (run_dir, proc.wait(120)) for name, (run_dir, proc) in started.items()}


@pytest.mark.parametrize("case", ["lora", "full"])
def test_run_emits_steps_windows_and_a_full_result(runs: dict[str, tuple[Path, int]],
                                                  case: str) -> None:
    run_dir, code = runs[case]
    assert code == 0, (run_dir / "stderr.log").read_text()
    events = _events(run_dir)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "error" not in kinds
    assert events[0].get("versions")["peft"]
    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases == ["load", "warmup", "measure", "eval", "save", "done"]
    steps = [e for e in events if e.kind == "step"]
    assert [(e.get("phase"), e.get("step")) for e in steps] == [
        ("warmup", 0), ("measure", 0), ("measure", 1), ("measure", 2)]
    for e in steps:
        assert e.get("tokens") == 96 and e.get("samples") == 2 and e.get("lr") > 0
    windows = {e.get("name"): e for e in events if e.kind == "window"}
    assert set(windows) == {"warmup", "measure"}
    assert windows["measure"].get("t0_ns") >= windows["warmup"].get("t1_ns")

    result = RunResult.from_dict(events[-1].fields)
    assert result.status == "ok"
    got = checks.by_name(result.metrics)
    checks.nulls_explained(result.metrics)
    v = {n: m.value for n, m in got.items()}
    info = result.info
    measured = [e for e in steps if e.get("phase") == "measure"]
    seconds = windows["measure"].get("elapsed_s")
    assert info["measure_s"] == seconds and info["measured_steps"] == 3
    # ST and TT per parameter of the base model (not its adapters), over the measured window
    base = info["base_params"]
    assert v["total_params"] == base
    assert v["st"] == pytest.approx(3 * 2 / (base * seconds))
    assert v["tt"] == pytest.approx(3 * 96 / (base * seconds))
    assert v["tokens_per_s"] == pytest.approx(3 * 96 / seconds)
    assert v["samples_per_s"] == pytest.approx(3 * 2 / seconds)
    checks.latency_matches(got, [e.get("latency_s") for e in measured])
    assert v["loss"] == measured[-1].get("loss")  # the last measured step's
    if case == "full":
        assert v["trainable_params"] == v["adapted_params"] == base
    else:
        assert 0 < v["trainable_params"] <= v["adapted_params"] - base  # lora: adapters only
    # tiny's weights are random: a held-out loss, but no perplexity to call quality
    assert 0 < v["eval_loss"] < 2 * math.log(catalog.model_card("tiny").vocab_size)
    assert (v["eval_ppl"], got["eval_ppl"].source, got["eval_ppl"].note) == (
        None, "none", RANDOM_WEIGHTS_NOTE)
    assert (v["mfu"], got["mfu"].note) == (None, NO_PEAK_NOTE)
    assert v["peak_allocated_gib"] is None and v["peak_reserved_gib"] is None  # CPU
    checks.energy_matches(got, windows["measure"].fields, 3 * 96)
    assert result.info["adapter_dir"] == "adapter"
    saved = run_dir / "adapter"
    assert saved.is_dir() and sorted(p.name for p in saved.iterdir()) == \
        sorted(result.info["adapter_files"])


def test_malformed_dataset_is_bad_input_naming_the_line(
        runs: dict[str, tuple[Path, int]]) -> None:
    run_dir, code = runs["bad-data"]
    assert code == 2
    error = _events(run_dir)[-1]
    assert error.kind == "error" and error.get("type") == "bad_input"
    assert "line 3" in error.get("message") and "respons" in error.get("message")
    assert "Traceback" not in (run_dir / "stderr.log").read_text()


def test_bad_parameter_is_bad_input(runs: dict[str, tuple[Path, int]]) -> None:
    run_dir, code = runs["bad-param"]
    assert code == 2
    assert "rank must be at least 1" in _events(run_dir)[-1].get("message")


def test_cli_run_lands_in_the_database_with_its_loss_curve(cli: Cli) -> None:
    out = cli("run", "-f", "finetuning", "-m", "tiny", "-t", "lora", "--device", "cpu",
              "--steps", "3", "--warmup", "1", "--seq-len", "48", "--batch-size", "2",
              "--set", "threads=1", "--set", "eval_batches=1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["status"] == "ok" and doc["family"] == "finetuning"
    m, notes, sources = doc["metrics"], doc["notes"], doc["sources"]
    rows = cli.json("sql", f"select phase, step, loss, lr, tokens, samples, latency_s from steps "
                    f"where run_id = '{doc['run_id']}' order by phase desc, step", "--format",
                    "json")
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("warmup", 0), ("measure", 0), ("measure", 1), ("measure", 2)]
    # The stored steps are the runner's step events, value for value.
    events = _events(cli.home / "runs" / doc["run_id"])
    stepped = [e for e in events if e.kind == "step"]
    assert [(r["loss"], r["lr"], r["tokens"], r["samples"], r["latency_s"]) for r in rows] == [
        (e.get("loss"), e.get("lr"), 96, 2, e.get("latency_s")) for e in stepped]
    measured = [r for r in rows if r["phase"] == "measure"]
    seconds = doc["info"]["measure_s"]
    assert m["total_params"] == doc["info"]["base_params"]
    assert m["st"] == pytest.approx(6 / (m["total_params"] * seconds))
    assert m["al_s"] == pytest.approx(sum(r["latency_s"] for r in measured) / 3)
    assert m["loss"] == measured[-1]["loss"]
    assert m["eval_ppl"] is None and sources["eval_ppl"] == "none"
    assert notes["eval_ppl"] == RANDOM_WEIGHTS_NOTE
    assert {n for n, x in m.items() if x is None} <= set(notes)  # every NULL says why
    assert 0 < m["trainable_params"] <= m["adapted_params"] - m["total_params"]
    adapter = cli.home / "runs" / doc["run_id"] / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file()
