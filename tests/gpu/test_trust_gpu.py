"""What is scored and labelled, on a real GPU: the NVML energy counter read at window edges
(a reading or None with its reason, never 0), no quality on random weights, ST over the base
model's parameters, every NULL with its reason, and a run alone on its GPU not contended."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.protocol import (
    EVENTS_FILE,
    RANDOM_WEIGHTS_NOTE,
    SPEC_FILE,
    Event,
    Metric,
    RunResult,
    RunSpec,
)
from runners.system.eventlog import EventLog

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]
DEVICE = "cuda:0"


def _run(tmp_path: Path, spec: RunSpec) -> tuple[RunResult, list[Event]]:
    """The spec through the runner's own entry point (as `python -m runners` runs it: the
    device lock, the contention watch and the result event), in this process."""
    from runners.__main__ import execute

    run_dir = tmp_path / "runs" / spec.run_id
    run_dir.mkdir(parents=True)
    (run_dir / SPEC_FILE).write_text(spec.to_json())
    log = EventLog(run_dir / EVENTS_FILE)
    try:
        code = execute(run_dir, log)
    finally:
        log.close()
    events = [Event.from_json(line) for line in
              (run_dir / EVENTS_FILE).read_text().splitlines()]
    assert code == 0 and events[-1].kind == "result", events[-1].to_json()
    return RunResult.from_dict(events[-1].fields), events


def _explained(metrics: tuple[Metric, ...]) -> None:
    for m in metrics:
        if m.value is None:
            assert m.source == "none" and m.note, m
        else:
            assert m.source != "none", m


def _energy_consistent(result: RunResult, events: list[Event]) -> None:
    window = next(e for e in events if e.kind == "window" and e.get("name") == "measure")
    energy = result.metric("energy_j")
    if energy is None:  # too short a window for NVML's ~100 ms counter: said, not 0
        assert window.get("energy_j") is None and window.get("energy_note")
        assert "did not advance" in window.get("energy_note") \
            or "energy" in window.get("energy_note")
    else:
        assert energy > 0 and energy == window.get("energy_j")
        assert window.get("energy_source") == "nvml"
        seconds = (window.get("t1_ns") - window.get("t0_ns")) / 1e9
        assert result.metric("aec_w") == pytest.approx(energy / seconds)
        assert 5 < result.metric("aec_w") < 1500  # an H100/H200 draws 60-700 W


def test_inference_on_cuda_scores_no_quality_on_random_weights(tmp_path: Path) -> None:
    spec = RunSpec(run_id="trust-int8", family="inference", technique="bf16", model="tiny",
                   device=DEVICE, seq_len=64, new_tokens=32, steps=20, warmup=2,
                   params={"engine": "graph", "peak_tflops": 989.0})
    result, events = _run(tmp_path, spec)
    assert result.status == "ok"
    _explained(result.metrics)
    got = {m.name: m for m in result.metrics}
    for name in ("eval_ppl", "mcr", "reference_ppl"):
        assert (got[name].value, got[name].note) == (None, RANDOM_WEIGHTS_NOTE), name
    assert got["mfu"].value is not None and 0 < got["mfu"].value < 1  # against the given peak
    _energy_consistent(result, events)
    assert result.info["contended"] is False, result.info.get("contended_note")
    assert result.info["foreign_processes"] == []


def test_finetuning_on_cuda_counts_base_params_and_energy(tmp_path: Path) -> None:
    spec = RunSpec(run_id="trust-lora", family="finetuning", technique="lora", model="tiny",
                   device=DEVICE, seq_len=128, batch_size=4, steps=30, warmup=2,
                   params={"eval_batches": 1, "compile": "off"})
    result, events = _run(tmp_path, spec)
    assert result.status == "ok"
    _explained(result.metrics)
    base = result.info["base_params"]
    assert result.metric("total_params") == base < result.metric("adapted_params")
    seconds = result.info["measure_s"]
    samples = sum(e.get("samples") for e in events
                  if e.kind == "step" and e.get("phase") == "measure")
    assert result.metric("st") == pytest.approx(samples / (base * seconds))
    assert result.metric("eval_ppl") is None
    _energy_consistent(result, events)
    assert result.info["contended"] is False, result.info.get("contended_note")
