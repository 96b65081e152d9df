"""Pretraining on a CUDA device: bf16 autocast, flash / efficient SDPA, fused AdamW, the
measured matmul peak (MFU) and NVML energy, in-process and through the runner process. Small
shapes: seconds, not a benchmark (benchmarks/bench_pretraining.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners import catalog
from runners.eventlog import EventLog
from runners.family import RunContext, family_class
from runners.protocol import EVENTS_FILE, Event, RunResult, RunSpec

ROOT = Path(__file__).resolve().parents[2]
SHAPE = dict(batch_size=4, seq_len=128, warmup=1, steps=2)


def train(tmp_path: Path, technique: str, steps: int = SHAPE["steps"],
          **params: object) -> RunResult:
    shape = {**SHAPE, "steps": steps}
    spec = RunSpec(run_id=f"g-{technique}", family="pretraining", technique=technique,
                   model="tiny", device="cuda:0", params={"eval_tokens": 512, **params},
                   **shape)  # type: ignore[arg-type]
    family_cls = family_class("pretraining")
    _, card = catalog.resolve("pretraining", technique, "tiny")
    config = family_cls.config_type.from_spec(spec, "cuda:0")
    log = EventLog(tmp_path / EVENTS_FILE)
    try:
        family = family_cls(config, card, RunContext(spec, tmp_path, tmp_path, "cuda:0", log))
        return family.run()
    finally:
        log.close()


def test_measured_peak_and_bf16_on_the_baseline(tmp_path: Path) -> None:
    r = train(tmp_path, "gqa", steps=60)  # a window of about a second: the energy counter moves
    assert r.status == "ok"
    info = r.info
    assert info["precision"] == "bf16-autocast" and info["optimizer"] == "AdamW (fused)"
    assert info["peak_source"] == "measured" and info["peak_tflops"] > 50
    for name in ("mfu", "peak_allocated_gib", "peak_reserved_gib", "tokens_per_s", "eval_ppl"):
        value = r.metric(name)
        assert value is not None and value > 0, name
    assert 0 < r.metric("mfu") < 1  # type: ignore[operator]
    if r.metric("energy_j") is None:
        pytest.skip(f"no NVML energy counter here: {info['energy_note']}")
    assert r.metric("energy_j") > 0 and r.metric("aec_w") > 20  # type: ignore[operator]


@pytest.mark.parametrize("technique", ["mla", "relative", "moe", "learned"])
def test_switched_variants_train_on_cuda(tmp_path: Path, technique: str) -> None:
    r = train(tmp_path, technique, peak_tflops=700.0)
    assert r.status == "ok"
    assert math.isfinite(r.metric("loss"))  # type: ignore[arg-type]
    energy = r.metric("energy_j")  # two short steps: None (with a note) rather than 0 J
    assert energy is None or energy > 0
    assert r.info["peak_source"] == "given" and r.metric("mfu") is not None


def test_runner_process_on_cuda(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "gpu-mqa"
    run_dir.mkdir(parents=True)
    spec = RunSpec(run_id="gpu-mqa", family="pretraining", technique="mqa", model="tiny",
                   device="cuda:0", params={"peak_tflops": 700.0},
                   **SHAPE)  # type: ignore[arg-type]
    (run_dir / "spec.json").write_text(spec.to_json())
    env = dict(os.environ, EFFICIENTLLM_HOME=str(tmp_path))
    code = subprocess.run([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=180).returncode
    assert code == 0, (run_dir / "stderr.log").read_text() if (run_dir / "stderr.log").exists() \
        else ""
    events = [Event.from_json(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    started = events[0]
    assert started.kind == "started" and started.get("gpu_name")
    result = RunResult.from_dict(events[-1].fields)
    assert result.status == "ok" and result.info["precision"] == "bf16-autocast"
    assert result.metric("peak_allocated_gib") is not None
