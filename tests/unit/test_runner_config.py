"""RunSpec -> family config: defaults, `--set` coercion and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.errors import BadInput, Unsupported
from runners.families.base import RunContext, family_class, sample_device
from runners.families.inference import InferenceConfig, InferenceFamily
from runners.models import catalog
from runners.protocol import RunSpec
from runners.system.eventlog import EventLog


def _spec(**kw: object) -> RunSpec:
    base: dict[str, object] = dict(run_id="r1", family="inference", technique="fp32",
                                   model="tiny", device="auto")
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_defaults() -> None:
    config = InferenceConfig.from_spec(_spec(), "cpu")
    assert isinstance(config, InferenceConfig)
    assert (config.device, config.engine, config.peak_tflops, config.threads) == (
        "cpu", "auto", None, None)
    assert (config.batch_size, config.seq_len, config.new_tokens, config.steps,
            config.warmup, config.eval_tokens) == (1, 64, 32, 8, 2, 512)


def test_set_params_are_coerced() -> None:
    config = InferenceConfig.from_spec(
        _spec(params={"engine": "eager", "peak_tflops": "989", "threads": 1.0}), "cuda:0")
    assert config.engine == "eager"
    assert config.peak_tflops == 989.0
    assert config.threads == 1 and isinstance(config.threads, int)


def test_param_kinds() -> None:
    assert InferenceConfig.param_kinds() == {
        "engine": str, "compile_mode": str, "dtype": str, "backend": str, "exclude": str,
        "mcr_reference": str,
        "calibration_tokens": int, "peak_tflops": float, "mem_bw_gbps": float, "threads": int,
        "eval_tokens": int, "phase_windows": bool, "trust_remote_code": bool, "quality": str,
        "quality_items": int, "score_of": str, "task": str, "quantize_vision": bool}


def test_device_defaults() -> None:
    cpu = InferenceConfig.from_spec(_spec(), "cpu")
    gpu = InferenceConfig.from_spec(_spec(), "cuda:0")
    # `auto` stays auto: the runner tries the device's engines in order (runners.engines.decode)
    assert (cpu.engine, cpu.mcr_reference) == ("auto", "fp32")
    assert (gpu.engine, gpu.mcr_reference) == ("auto", "bf16")
    assert InferenceConfig.from_spec(_spec(params={"engine": "eager"}), "cuda:0").engine == "eager"


@pytest.mark.parametrize(("params", "match"), [
    ({"engnie": "loop"}, r"unknown --set parameter\(s\) for inference: engnie \(valid: .*engine"),
    ({"dtype": "fp64"}, "unknown dtype 'fp64'"),
    ({"compile_mode": "reduce-overhead"}, "unknown compile_mode 'reduce-overhead'"),
    ({"engine": "compile", "compile_mode": "none"}, "none only with engine=fused"),
    ({"mcr_reference": "int8"}, r"unknown mcr_reference 'int8' \(choose from auto, bf16, fp32"),
    ({"mem_bw_gbps": -1}, "mem_bw_gbps must be positive"),
    ({"calibration_tokens": 1}, "calibration_tokens must be at least 2"),
    ({"engine": "turbo"}, "unknown engine 'turbo'"),
    ({"peak_tflops": 0}, "peak_tflops must be positive"),
    ({"peak_tflops": "fast"}, "expected float"),
    ({"threads": 0}, "threads must be at least 1"),
    ({"eval_tokens": 1}, "eval_tokens"),
])
def test_bad_params(params: dict[str, object], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        InferenceConfig.from_spec(_spec(params=params), "cpu")


def test_device_must_be_resolved() -> None:
    with pytest.raises(BadInput, match="resolved"):
        InferenceConfig.from_spec(_spec(), "auto")


def test_sequence_longer_than_the_model_is_bad_input(tmp_path: Path) -> None:
    spec = _spec(seq_len=4090, new_tokens=32)
    config = InferenceConfig.from_spec(spec, "cpu")
    ctx = RunContext(spec, tmp_path, tmp_path, "cpu", EventLog(tmp_path / "events.jsonl"))
    family = InferenceFamily(config, catalog.model_card("tiny"), ctx)
    with pytest.raises(BadInput, match="exceeds tiny's 4096 positions"):
        family.validate()


def test_registry() -> None:
    assert family_class("inference") is InferenceFamily
    for technique in ("fp32", "bf16", "fp16", "int8", "int4", "fp8", "w8a8", "int8-ao",
                      "int4-ao"):
        InferenceFamily.check_technique(technique)
    with pytest.raises(Unsupported, match="'lora' \\(inference\\) is not implemented"):
        InferenceFamily.check_technique("lora")
    assert family_class("finetuning").name == "finetuning"  # imported on first use
    with pytest.raises(BadInput, match="unknown family"):
        family_class("training")


def test_sample_device_names() -> None:
    assert [sample_device(d) for d in ("cpu", "cuda:0", "cuda:3")] == ["cpu", "gpu0", "gpu3"]
