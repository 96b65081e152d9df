"""The inference family in this process on tiny: the MCR reference when memory is short,
engine choice, the techniques' dtypes, and no quality scored on random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runners.families.base import RunContext
from runners.families.inference import TECHNIQUES, InferenceConfig, InferenceFamily
from runners.models import build as model_mod
from runners.models import catalog
from runners.protocol import EVENTS_FILE, RANDOM_WEIGHTS_NOTE, Event, Metric, RunResult, RunSpec
from runners.system.eventlog import EventLog

SMALL = dict(seq_len=16, new_tokens=4, steps=1, warmup=0)
TINY_PARAMS = 4_003_072
TINY_FP32_BYTES = 4 * TINY_PARAMS + 256  # fp32 weights + the rotary buffers
QUALITY = ("eval_ppl", "reference_ppl", "mcr")


def _run(tmp_path: Path, technique: str, **params: object) -> tuple[RunResult, list[Event]]:
    spec = RunSpec(run_id="r", family="inference", technique=technique, model="tiny",
                   device="cpu", params={"threads": 1, "eval_tokens": 64, **params},
                   **SMALL)  # type: ignore[arg-type]
    log = EventLog(tmp_path / EVENTS_FILE)
    ctx = RunContext(spec, tmp_path, tmp_path, "cpu", log)
    family = InferenceFamily(InferenceConfig.from_spec(spec, "cpu"),
                             catalog.model_card("tiny"), ctx)
    family.validate()
    try:
        result = family.run()
    finally:
        log.close()
    events = [Event.from_json(x) for x in (tmp_path / EVENTS_FILE).read_text().splitlines()]
    return result, events


def _metrics(result: RunResult) -> dict[str, Metric]:
    return {m.name: m for m in result.metrics}


def _phases(events: list[Event]) -> dict[str, Event]:
    return {e.get("name"): e for e in events if e.kind == "phase"}


def _unscored(got: dict[str, Metric], names: tuple[str, ...] = QUALITY) -> None:
    """Random weights: no perplexity and no MCR, each NULL saying why."""
    for name in names:
        assert (got[name].value, got[name].source, got[name].note) == (
            None, "none", RANDOM_WEIGHTS_NOTE), name


def test_compute_dtypes() -> None:
    assert TECHNIQUES["bf16"].compute_dtype("auto", "cpu") == torch.bfloat16
    assert TECHNIQUES["int8"].compute_dtype("auto", "cpu") == torch.float32
    assert TECHNIQUES["int8"].compute_dtype("auto", "cuda:0") == torch.bfloat16
    assert TECHNIQUES["int4"].compute_dtype("fp16", "cuda:0") == torch.float16


def test_reference_in_another_dtype(tmp_path: Path) -> None:
    result, events = _run(tmp_path, "int8", dtype="bf16")  # fp32 reference, bf16 compute
    info, got = result.info, _metrics(result)
    assert info["mcr_reference"] == "float32" and info["dtype"] == "bfloat16"
    # The reference's size is measured (the compression ratio stands) ...
    assert got["reference_weight_bytes"].value == info["reference_weight_bytes"] == \
        TINY_FP32_BYTES
    assert got["weight_bytes"].value == info["weight_bytes"]
    assert got["compression_ratio"].value == TINY_FP32_BYTES / info["weight_bytes"]
    assert got["compression_ratio"].value > 2  # int8 weights, bf16 for the rest
    assert (got["compression_ratio"].source, got["compression_ratio"].note) == ("runner", None)
    # ... but tiny's weights are random: no perplexity is computed, none is stored
    assert info["weights"] == "random" and info["quality_scored"] is False
    _unscored(got)
    phases = _phases(events)
    assert phases["reference"].get("dtype") == "float32" and phases["reference"].get("tokens") == 0
    assert "eval" not in phases


def test_no_reference_when_the_float32_original_does_not_fit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # room for tiny in bf16 (8 MB) but not in fp32 (16 MB)
    monkeypatch.setattr(model_mod, "free_bytes", lambda device: 12 * 2**20)
    result, events = _run(tmp_path, "bf16")
    info, got = result.info, _metrics(result)
    assert result.status == "ok" and info["dtype"] == "bfloat16"
    note = ("no MCR reference: model 'tiny' needs 0.01 GiB of weights in float32 but cpu has "
            "0.01 GiB free")
    assert info["mcr_reference_note"] == note
    assert [e.get("message") for e in events if e.kind == "log"] == [note]
    assert info["mcr_reference"] is None and info["reference_weight_bytes"] is None
    assert "reference" not in _phases(events)
    assert got["weight_bytes"].value == 2 * TINY_PARAMS + 256  # bf16 weights, fp32 buffers
    for name in ("reference_weight_bytes", "compression_ratio"):
        assert (got[name].value, got[name].source) == (None, "none") and got[name].note, name
    _unscored(got)


def test_no_reference_asked_for(tmp_path: Path) -> None:
    result, events = _run(tmp_path, "int4", mcr_reference="none", dtype="bf16")
    info, got = result.info, _metrics(result)
    assert info["mcr_reference"] is None and info["reference_weight_bytes"] is None
    assert "reference" not in _phases(events) and "quantize" in _phases(events)
    assert got["weight_bytes"].value < TINY_PARAMS  # int4 + bf16 rest: under 1 byte/param
    for name in ("reference_weight_bytes", "compression_ratio"):
        assert (got[name].value, got[name].source) == (None, "none") and got[name].note, name
    _unscored(got)
