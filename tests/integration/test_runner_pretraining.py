"""Every pretraining technique trains on `tiny` on CPU and its loss goes down; the runner
process end to end.

Most runs go through the family's Python API in this process (a subprocess per technique
would spend most of its time importing torch); two run as real `python -m runners`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runners.families.base import RunContext, family_class
from runners.models import catalog
from runners.protocol import EVENTS_FILE, NO_PEAK_NOTE, Event, RunResult, RunSpec
from runners.system.eventlog import EventLog

from . import checks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TECHNIQUES = [t.id for t in catalog.techniques() if t.family == "pretraining"]
LEARN = dict(batch_size=4, seq_len=32, warmup=2, steps=14)
"""A learnable setting: byte text, lr 2e-3, seconds per technique on one core."""
SLOW_PATHS = {"mamba": dict(batch_size=4, seq_len=16, warmup=1, steps=7)}
"""transformers' reference Mamba scan loops over time steps in Python: fewer, shorter steps."""
SHAPED = {"nsa": dict(LEARN, seq_len=64, params={"lr": 2e-3, "eval_tokens": 256,
                                                "nsa_block": 16, "nsa_blocks": 4,
                                                "nsa_window": 16})}
"""NSA's seq_len is a multiple of its block: 4 blocks of 16, a 16-token window."""
METRICS = {
    "al_s": "s", "al_p50_s": "s", "al_p90_s": "s", "al_p99_s": "s", "tt": "tokens/param/s",
    "tokens_per_s": "tokens/s", "samples_per_s": "samples/s", "energy_j": "J", "aec_w": "W",
    "j_per_token": "J/token", "peak_allocated_gib": "GiB", "peak_reserved_gib": "GiB",
    "total_params": "params", "active_params": "params", "trainable_params": "params",
    "mfu": "fraction", "loss": "nats/token", "eval_ppl": "ppl",
}


@dataclass
class Trained:
    result: RunResult
    events: list[Event]

    @property
    def losses(self) -> list[float]:
        return [e.get("loss") for e in self.events if e.kind == "step"]


def train(tmp_path: Path, technique: str, **spec: object) -> Trained:
    """Run the pretraining family in this process, events to tmp_path/events.jsonl."""
    fields: dict[str, object] = dict(run_id=f"p-{technique}", family="pretraining",
                                     technique=technique, model="tiny", device="cpu",
                                     params={"lr": 2e-3, "eval_tokens": 256})
    fields.update(spec)
    run_spec = RunSpec(**fields)  # type: ignore[arg-type]
    family_cls = family_class("pretraining")
    _, card = catalog.resolve("pretraining", technique, "tiny")
    config = family_cls.config_type.from_spec(run_spec, "cpu")
    log = EventLog(tmp_path / EVENTS_FILE)
    try:
        family = family_cls(config, card, RunContext(run_spec, tmp_path, tmp_path, "cpu", log))
        family.validate()
        result = family.run()
    finally:
        log.close()
    events = [Event.from_json(line) for line in (tmp_path / EVENTS_FILE).read_text()
              .splitlines()]
    return Trained(result, events)


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_technique_trains_and_loss_goes_down(tmp_path: Path, technique: str) -> None:
    shape = SLOW_PATHS.get(technique) or SHAPED.get(technique, LEARN)
    run = train(tmp_path, technique, **shape)
    r = run.result
    assert r.status == "ok"
    losses = run.losses
    assert len(losses) == shape["warmup"] + shape["steps"]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, f"{technique}: loss {losses}"
    assert {m.name: m.unit for m in r.metrics}.items() >= METRICS.items()
    got = checks.by_name(r.metrics)
    checks.nulls_explained(r.metrics)
    info = r.info
    measured = [e for e in run.events if e.kind == "step" and e.get("phase") == "measure"]
    window = next(e for e in run.events if e.kind == "window" and e.get("name") == "measure")
    seconds = window.get("elapsed_s")
    assert info["measure_s"] == seconds and len(measured) == shape["steps"]
    tokens = shape["steps"] * shape["batch_size"] * shape["seq_len"]
    params = r.metric("total_params")
    assert r.metric("tt") == pytest.approx(tokens / (params * seconds))
    assert r.metric("tokens_per_s") == pytest.approx(tokens / seconds)
    assert r.metric("samples_per_s") == pytest.approx(shape["steps"] * shape["batch_size"]
                                                      / seconds)
    checks.latency_matches(got, [e.get("latency_s") for e in measured])
    tail = [e.get("loss") for e in measured[-5:]]  # the last five measured steps
    assert r.metric("loss") == pytest.approx(sum(tail) / len(tail))
    # Trained from scratch, so its perplexity is scored: below a uniform guess over the
    # vocabulary and below where training started.
    assert info["eval_tokens"] == 256 and (got["eval_ppl"].source, got["eval_ppl"].note) == (
        "runner", None)
    assert 1 < r.metric("eval_ppl") < min(info["vocab_size"], math.exp(first))
    assert (r.metric("mfu"), got["mfu"].note) == (None, NO_PEAK_NOTE)  # no peak on CPU
    assert r.metric("peak_allocated_gib") is None and r.metric("peak_reserved_gib") is None
    checks.energy_matches(got, window.fields, tokens)
    assert info["group"] == catalog.technique(technique).group
    matching = info["matching"]
    assert "rule" in matching and matching["total_params"] == info["total_params"]
    assert matching["baseline_total_params"] + matching["delta_params"] == info["total_params"]
    assert matching["delta_params_pct"] == pytest.approx(
        100 * matching["delta_params"] / matching["baseline_total_params"])
    assert info["total_params"] == r.metric("total_params")
    steps = [e for e in run.events if e.kind == "step"]
    assert all(e.get("lr") > 0 and e.get("tokens") == shape["batch_size"] * shape["seq_len"]
               for e in steps)
    assert [e.get("name") for e in run.events if e.kind == "window"] == ["warmup", "measure"]
    if technique == "moe":
        assert r.metric("active_params") < r.metric("total_params")
        assert r.metric("aux_loss") >= 1.0 - 1e-6
        assert info["moe"]["routing"] == "dropless"
    elif technique in ("mamba", "rwkv", "pythia"):
        assert abs(info["matching"]["delta_params_pct"]) < 1.0
        assert info["arch"] == technique
    else:
        assert r.metric("active_params") == r.metric("total_params")


def test_baseline_ids_are_one_model(tmp_path: Path) -> None:
    short = dict(batch_size=2, seq_len=16, warmup=0, steps=3)
    runs = []
    for technique in ("gqa", "transformer"):
        (tmp_path / technique).mkdir()
        runs.append(train(tmp_path / technique, technique, **short))
    assert runs[0].losses == runs[1].losses
    assert runs[0].result.info["total_params"] == runs[1].result.info["total_params"]


def test_attention_variants_state_their_param_deltas(tmp_path: Path) -> None:
    short = dict(batch_size=2, seq_len=16, warmup=0, steps=1, params={"eval_tokens": 0})
    deltas = {}
    for t in ("mha", "mqa", "mla"):
        (tmp_path / t).mkdir()
        deltas[t] = train(tmp_path / t, t, **short).result.info["matching"]["delta_params"]
    hd, d, layers = 64, 256, 4
    assert deltas["mha"] == layers * 2 * (d + 1) * hd * (4 - 2)  # K/V for two more heads
    assert deltas["mqa"] == -layers * 2 * (d + 1) * hd * (2 - 1)
    assert deltas["mla"] > 0


# --- the runner process -----------------------------------------------------------------------


def launch(home: Path, run_id: str, **spec: object) -> tuple[subprocess.Popen[bytes], Path]:
    fields: dict[str, object] = dict(run_id=run_id, family="pretraining", technique="gqa",
                                     model="tiny", device="cpu")
    fields.update(spec)
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(RunSpec(**fields).to_json())  # type: ignore[arg-type]
    env = dict(os.environ, EFFICIENTLLM_HOME=str(home))
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return proc, run_dir


def events_of(run_dir: Path) -> list[Event]:
    return [Event.from_json(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]


def test_runner_process_end_to_end(tmp_path: Path) -> None:
    """mla on a user jsonl dataset with a checkpoint, and a bad pair, at once."""
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"Document {i}: the cat sat on the mat. "
                                                  * 8}) for i in range(40)))
    home = tmp_path / "home"
    good, good_dir = launch(home, "ok-mla", technique="mla", batch_size=2, seq_len=32,
                            warmup=1, steps=4, dataset=str(data),
                            params={"save": True, "lr": 2e-3})
    bad, bad_dir = launch(home, "bad-real", model="smollm2-135m")
    t0 = time.monotonic()
    assert good.wait(timeout=120) == 0, (good_dir / "stderr.log").read_text()
    assert bad.wait(timeout=60) == 2
    assert time.monotonic() - t0 < 120

    events = events_of(good_dir)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "error" not in kinds
    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases == ["load", "warmup", "measure", "eval", "done"]
    steps = [e for e in events if e.kind == "step"]
    assert [e.get("phase") for e in steps] == ["warmup"] + ["measure"] * 4
    result = RunResult.from_dict(events[-1].fields)
    info = result.info
    assert result.status == "ok" and info["eval_tokens"] > 1
    assert 1 < result.metric("eval_ppl") < info["vocab_size"]
    measured = [e for e in steps if e.get("phase") == "measure"]
    assert result.metric("tt") == pytest.approx(
        4 * 2 * 32 / (result.metric("total_params") * info["measure_s"]))
    assert result.metric("loss") == pytest.approx(sum(e.get("loss") for e in measured) / 4)
    assert info["text"] == str(data.resolve())
    # Reading stops at what the run consumes (5 steps x 2 x 32) plus the held-out slice.
    assert info["dataset_truncated"] and 1 < info["documents"] < 40
    assert info["mla"]["kv_lora_rank"] == 256 and info["mla"]["rope_head_dim"] == 32
    assert Path(info["checkpoint"]).is_file()

    bad_events = events_of(bad_dir)
    assert bad_events[-1].kind == "error" and bad_events[-1].get("type") == "bad_input"
    assert "random weights" in bad_events[-1].get("message")
