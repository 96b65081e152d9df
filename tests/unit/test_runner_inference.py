"""The inference family in this process on tiny: the MCR reference when memory is short,
engine choice, and the techniques' dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runners import catalog
from runners import model as model_mod
from runners.eventlog import EventLog
from runners.family import RunContext
from runners.inference import TECHNIQUES, InferenceConfig, InferenceFamily
from runners.protocol import RunResult, RunSpec

SMALL = dict(seq_len=16, new_tokens=4, steps=1, warmup=0)


def _run(tmp_path: Path, technique: str, **params: object) -> RunResult:
    spec = RunSpec(run_id="r", family="inference", technique=technique, model="tiny",
                   device="cpu", params={"threads": 1, "eval_tokens": 64, **params},
                   **SMALL)  # type: ignore[arg-type]
    ctx = RunContext(spec, tmp_path, tmp_path, "cpu", EventLog(tmp_path / "events.jsonl"))
    family = InferenceFamily(InferenceConfig.from_spec(spec, "cpu"),
                             catalog.model_card("tiny"), ctx)
    family.validate()
    return family.run()


def test_compute_dtypes() -> None:
    assert TECHNIQUES["bf16"].compute_dtype("auto", "cpu") == torch.bfloat16
    assert TECHNIQUES["int8"].compute_dtype("auto", "cpu") == torch.float32
    assert TECHNIQUES["int8"].compute_dtype("auto", "cuda:0") == torch.bfloat16
    assert TECHNIQUES["int4"].compute_dtype("fp16", "cuda:0") == torch.float16


def test_reference_in_another_dtype(tmp_path: Path) -> None:
    result = _run(tmp_path, "int8", dtype="bf16")  # fp32 reference, bf16 compute
    assert result.info["mcr_reference"] == "float32" and result.info["dtype"] == "bfloat16"
    assert result.metric("reference_weight_bytes") == 4 * 4_003_072 + 256
    assert result.metric("mcr") is not None


def test_no_reference_when_the_float32_original_does_not_fit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # room for tiny in bf16 (8 MB) but not in fp32 (16 MB)
    monkeypatch.setattr(model_mod, "free_bytes", lambda device: 12 * 2**20)
    result = _run(tmp_path, "bf16")
    assert result.status == "ok" and result.info["dtype"] == "bfloat16"
    assert result.metric("mcr") is None and result.metric("eval_ppl") is not None
    assert "no MCR reference" in result.info["mcr_reference_note"]


def test_no_reference_asked_for(tmp_path: Path) -> None:
    result = _run(tmp_path, "int4", mcr_reference="none", dtype="bf16")
    assert result.info["mcr_reference"] is None and result.metric("mcr") is None
    assert result.metric("weight_bytes") < 4_003_072  # int4 + bf16 rest: under 1 byte/param
