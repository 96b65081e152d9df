"""The finetuning family in process on `tiny` (CPU): every technique trains a few steps,
reports every metric and saves what it trained; config checks; the FLOP formula; OOM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from profiling import metrics as pm
from runners.engines import training
from runners.engines.compilation import COMPILE_AUTO, resolve_compile
from runners.errors import BadInput, Unsupported
from runners.families.base import RunContext, family_class
from runners.families.finetuning import FinetuningConfig, FinetuningFamily, train_flops_per_token
from runners.models import catalog
from runners.protocol import (
    EVENTS_FILE,
    NO_PEAK_NOTE,
    RANDOM_WEIGHTS_NOTE,
    Event,
    RunResult,
    RunSpec,
)
from runners.system.eventlog import EventLog
from runners.techniques import peft_methods

TECHNIQUES = sorted(peft_methods.METHODS)
SMALL = dict(seq_len=32, batch_size=2, steps=2, warmup=1)
METRICS = {"st": "samples/param/s", "tt": "tokens/param/s", "tokens_per_s": "tokens/s",
           "samples_per_s": "samples/s", "al_s": "s", "al_p50_s": "s", "al_p90_s": "s",
           "al_p99_s": "s", "trainable_params": "params", "total_params": "params",
           "loss": "nats/token", "eval_loss": "nats/token", "eval_ppl": "ppl",
           "peak_allocated_gib": "GiB", "peak_reserved_gib": "GiB", "energy_j": "J",
           "aec_w": "W", "j_per_token": "J/token", "mfu": "fraction", "adapted_params": "params"}


def _spec(technique: str = "lora", **extra: Any) -> RunSpec:
    fields: dict[str, Any] = dict(run_id=f"t-{technique}", family="finetuning",
                                  technique=technique, model="tiny", device="cpu", **SMALL)
    params = {"threads": 1, "eval_batches": 1, **extra.pop("params", {})}
    fields.update(extra)
    return RunSpec(params=params, **fields)


def _run(tmp_path: Path, spec: RunSpec) -> tuple[RunResult, list[Event]]:
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    log = EventLog(run_dir / EVENTS_FILE)
    config = FinetuningConfig.from_spec(spec, "cpu")
    family = FinetuningFamily(config, catalog.model_card(spec.model),
                              RunContext(spec, run_dir, tmp_path, "cpu", log))
    family.validate()
    result = family.run()
    log.close()
    events = [Event.from_json(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    return result, events


def test_registry_and_catalog_agree() -> None:
    assert family_class("finetuning") is FinetuningFamily
    ids = {t.id for t in catalog.techniques() if t.family == "finetuning"}
    assert ids == set(FinetuningFamily.techniques) == set(TECHNIQUES)


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_every_technique_trains_reports_and_saves(tmp_path: Path, technique: str) -> None:
    result, events = _run(tmp_path, _spec(technique))
    assert result.status == "ok"
    got = {m.name: m for m in result.metrics}
    assert {n: m.unit for n, m in got.items()} == METRICS
    assert got["peak_allocated_gib"].value is None and got["mfu"].value is None  # CPU
    assert got["mfu"].note == NO_PEAK_NOTE and got["mfu"].source == "none"
    # tiny has random weights: its perplexity says nothing of a method's quality
    assert (got["eval_ppl"].value, got["eval_ppl"].source, got["eval_ppl"].note) == (
        None, "none", RANDOM_WEIGHTS_NOTE)
    assert got["eval_loss"].value > 0 and got["loss"].value > 0
    # ST and TT divide by the base model's parameters, never the adapters' (DESIGN.md 6)
    base = result.info["base_params"]
    trainable, total = got["trainable_params"].value, got["total_params"].value
    adapted = got["adapted_params"].value
    assert total == base
    if technique == "full":
        assert trainable == adapted == base
    elif technique == "freeze":
        assert adapted == base and 0 < trainable < base
    elif technique != "qlora":  # quanto's packed int4 tensors count their storage
        assert adapted > base and 0 < trainable <= adapted - base

    steps = [e for e in events if e.kind == "step"]
    measured = [e for e in steps if e.get("phase") == "measure"]
    seconds = result.info["measure_s"]
    assert got["st"].value == pytest.approx(sum(e.get("samples") for e in measured)
                                            / (base * seconds))
    assert got["tt"].value == pytest.approx(sum(e.get("tokens") for e in measured)
                                            / (base * seconds))
    assert got["al_s"].value == pytest.approx(
        sum(e.get("latency_s") for e in measured) / len(measured))
    energy = got["energy_j"]
    if energy.value is None:  # no readable RAPL here: the reason is stored
        assert energy.source == "none" and energy.note.startswith("no CPU energy counter")
    else:
        assert energy.source == "rapl" and energy.value > 0

    assert [(e.get("phase"), e.get("step")) for e in steps] == [
        ("warmup", 0), ("measure", 0), ("measure", 1)]
    for e in steps:
        assert e.get("tokens") == 2 * 32 and e.get("samples") == 2
        assert e.get("lr") > 0 and e.get("latency_s") > 0 and e.get("loss") > 0
    assert got["loss"].value == steps[-1].get("loss")
    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases == ["load", "warmup", "measure", "eval", "save"]

    files = result.info["adapter_files"]
    adapter = tmp_path / result.run_id / "adapter"
    assert files and all((adapter / f).is_file() for f in files)
    if technique not in ("full", "freeze"):
        assert "adapter_model.safetensors" in files
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
    assert result.info["lr"] == peft_methods.METHODS[technique].default_lr
    if technique == "qlora":
        assert result.info["quantization"]["weights"] == "qint4"
    assert result.info["flops_per_token"] > 0


def test_lora_plus_optimizer_has_the_ratio(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, _spec("lora-plus", params={"loraplus_ratio": 4, "lr": 1e-3}))
    assert result.info["lr"] == 1e-3 and result.info["hyper"]["loraplus_ratio"] == 4.0
    assert result.info["param_group_lrs"] == [1e-3, 4e-3]  # A at lr, B at 4 x lr
    plain, _ = _run(tmp_path, _spec("lora", params={"lr": 1e-3}))
    assert plain.info["param_group_lrs"] == [1e-3]


def test_settable_hyper_parameters_reach_peft(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, _spec("rslora", seq_len=256, params={
        "rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": "q_proj,v_proj",
        "grad_accum": 2, "grad_ckpt": True, "packing": False, "save": False}))
    cfg = result.info["adapter_config"]
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["use_rslora"] is True
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert result.info["samples_per_step"] == 4 and result.info["adapter_files"] == []
    # 4 layers x (q: 256x256, v: 256x128) at rank 4: A (r x in) + B (out x r)
    assert result.metric("trainable_params") == 4 * (4 * (256 + 256) + 4 * (256 + 128))


def test_freeze_trains_only_the_last_k_blocks(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, _spec("freeze", params={"freeze_k": 1}))
    block = (256 * 256 + 256) + 2 * (256 * 128 + 128) + 256 * 256 + 3 * 256 * 1024 + 2 * 256
    assert result.metric("trainable_params") == block
    assert result.info["first_trained_block"] == 3


def test_unchunked_loss_gives_the_same_training(tmp_path: Path) -> None:
    a, _ = _run(tmp_path, _spec("full", run_id="chunked", params={"save": False}))
    b, _ = _run(tmp_path, _spec("full", run_id="unchunked",
                                params={"save": False, "loss_chunk_rows": 0}))
    assert a.metric("loss") == pytest.approx(b.metric("loss"), rel=1e-4)
    assert a.metric("eval_loss") == pytest.approx(b.metric("eval_loss"), rel=1e-4)


@pytest.mark.parametrize(("params", "message"), [
    ({"rank": 0}, "rank must be at least 1"),
    ({"dropout": 1.0}, "dropout must be within"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"grad_accum": 0}, "grad_accum must be at least 1"),
    ({"target_modules": "q_proj;rm -rf"}, "target_modules must be"),
    ({"lr": -1}, "lr must be positive"),
    ({"nonsense": 1}, "unknown --set parameter"),
    ({"rank": "big"}, "expected int"),
    ({"compile": "max-autotune"}, "unknown compile 'max-autotune'"),
])
def test_bad_parameters_are_bad_input(params: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        FinetuningConfig.from_spec(_spec(params=params), "cpu")


def test_validate_checks_the_card_and_the_data(tmp_path: Path) -> None:
    def family(spec: RunSpec) -> FinetuningFamily:
        ctx = RunContext(spec, tmp_path, tmp_path, "cpu", EventLog(tmp_path / "e.jsonl"))
        return FinetuningFamily(FinetuningConfig.from_spec(spec, "cpu"),
                                catalog.model_card("tiny"), ctx)

    with pytest.raises(BadInput, match="freeze_k 9 exceeds tiny's 4 blocks"):
        family(_spec("freeze", params={"freeze_k": 9})).validate()
    with pytest.raises(BadInput, match="20 virtual tokens exceeds"):
        family(_spec("prompt-tuning", seq_len=4090)).validate()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"\n')
    with pytest.raises(BadInput, match="line 2: not valid JSON"):
        family(_spec(dataset=str(bad))).validate()


def test_full_flops_are_the_design_formula() -> None:
    n, layers, d, t = 1_000_000, 4, 256, 64
    got = train_flops_per_token(total_params=n, trainable_params=n,
                                block_params=[200_000] * layers, first_block=0, d_attn=d,
                                context_len=t)
    assert got == pm.flops_per_token(n, training=True, n_layers=layers, d_attn=d,
                                     context_len=t)


def test_peft_and_freeze_flops_by_hand() -> None:
    blocks = [100] * 4
    lora = train_flops_per_token(total_params=1000, trainable_params=10, block_params=blocks,
                                 first_block=0, d_attn=2, context_len=3)
    assert lora == 2 * 1000 + 2 * 1000 + 2 * 10 + 12 * 4 * 2 * 3
    freeze = train_flops_per_token(total_params=1000, trainable_params=100,
                                   block_params=blocks, first_block=3, d_attn=2, context_len=3,
                                   untied_embedding_params=50)
    path = 1000 - 300 - 50
    assert freeze == 2 * 1000 + 2 * path + 2 * 100 + 4 * 4 * 6 + 8 * 1 * 6


def test_oom_is_a_result_with_batch_size_and_memory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runners.__main__ import execute

    def boom(self: Any, micro: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training.TrainStep, "__call__", boom)
    home = tmp_path / "home"
    run_dir = home / "runs" / "oom-run"
    run_dir.mkdir(parents=True)
    spec = _spec("lora", run_id="oom-run", batch_size=3)
    (run_dir / "spec.json").write_text(spec.to_json())
    log = EventLog(run_dir / EVENTS_FILE)
    assert execute(run_dir, log) == 1
    log.close()
    events = [Event.from_json(x) for x in (run_dir / EVENTS_FILE).read_text().splitlines()]
    error, result = events[-2], RunResult.from_dict(events[-1].fields)
    assert error.kind == "error" and error.get("type") == "oom"
    assert result.status == "oom" and result.error_type == "oom"
    assert result.info["batch_size"] == 3 and result.info["technique"] == "lora"
    assert {"peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib"} <= set(result.info)
    assert result.info["trainable_params"] > 0


def test_qlora_kernel_build_failure_on_cuda_is_unsupported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from optimum.quanto.library import extensions

    class Broken:
        build_directory = "/nonexistent"

        @property
        def lib(self) -> Any:
            raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(extensions, "is_extension_available", lambda name: True)
    monkeypatch.setattr(extensions, "get_extension", lambda name: Broken())
    phases: list[str] = []
    with pytest.raises(Unsupported, match="building them failed: RuntimeError: Ninja"):
        peft_methods._quanto_cuda_kernels(lambda name, **extra: phases.append(name))
    assert phases == ["compile_kernels"]


# -- torch.compile: plumbing, auto, fallback (no real compilation on CPU: minutes) ----------

@pytest.mark.parametrize(("value", "mode"), [
    (True, "layers"), (False, "off"), ("true", "layers"), ("off", "off"), ("Layers", "layers"),
    ("model", "model"), ("auto", "auto")])
def test_compile_values_normalise(value: Any, mode: str) -> None:
    assert FinetuningConfig.from_spec(_spec(params={"compile": value}), "cpu").compile == mode
    assert FinetuningConfig.from_spec(_spec(), "cpu").compile == "auto"  # the default


def test_compile_auto_is_layers_on_cuda_for_the_lora_family_and_full_only() -> None:
    for technique in TECHNIQUES:
        assert resolve_compile("auto", "cpu", technique) == "off"
        want = "layers" if technique in COMPILE_AUTO else "off"
        assert resolve_compile("auto", "cuda:0", technique) == want, technique
    assert {"full", "lora"} <= COMPILE_AUTO
    assert not COMPILE_AUTO & {"qlora", "adalora", "prompt-tuning"}
    for mode in ("off", "layers", "model"):  # explicit choices are kept, on any device
        assert resolve_compile(mode, "cpu", "qlora") == mode


def test_cpu_default_runs_eager_and_says_so(tmp_path: Path) -> None:
    result, events = _run(tmp_path, _spec("lora", params={"save": False}))
    info = result.info
    assert info["compile"] == "off" and info["compile_requested"] == "auto"
    assert info["compile_s"] is None and info["compile_error"] is None
    assert "compile" not in [e.get("name") for e in events if e.kind == "phase"]


def _fake_compile(monkeypatch: pytest.MonkeyPatch, fail_after: int | None) -> list[Any]:
    """nn.Module.compile that runs eagerly and raises from call `fail_after` (1-based) on."""
    compiled: list[Any] = []
    calls = [0]

    def compile_(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        compiled.append(self)

        def call(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if fail_after is not None and calls[0] >= fail_after:
                raise RuntimeError("BackendCompilerFailed: inductor exploded")
            return self._call_impl(*a, **k)

        self._compiled_call_impl = call

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    return compiled


def test_layers_compiles_each_block_before_the_warmup(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _fake_compile(monkeypatch, None)
    result, events = _run(tmp_path, _spec("lora", params={"compile": "layers", "save": False}))
    assert result.status == "ok"
    assert len(compiled) == catalog.model_card("tiny").num_layers
    assert all(type(m).__name__.endswith("DecoderLayer") for m in compiled)
    info = result.info
    assert info["compile"] == "layers" and info["compile_error"] is None
    assert info["compile_s"] > 0 and set(info["compile_graphs"]) == {"compile", "warmup",
                                                                    "measure"}
    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases == ["load", "compile", "warmup", "measure", "eval"]


def test_model_mode_compiles_the_decoder_stack(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _fake_compile(monkeypatch, None)
    result, _ = _run(tmp_path, _spec("full", params={"compile": "model", "save": False}))
    assert result.status == "ok" and result.info["compile"] == "model"
    assert [type(m).__name__ for m in compiled] == ["Qwen2Model"]  # tiny is a Qwen2


@pytest.mark.parametrize(("fail_after", "phase"), [(1, "compile"), (6, "warmup")])
def test_a_compiler_failure_falls_back_to_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                fail_after: int, phase: str) -> None:
    # tiny has 4 blocks: calls 1-4 are the compile pass, 5-8 the first warm-up step.
    _fake_compile(monkeypatch, fail_after)
    result, events = _run(tmp_path, _spec("lora", params={"compile": "layers", "save": False}))
    assert result.status == "ok"
    info = result.info
    assert info["compile"] == "off" and info["compile_requested"] == "layers"
    assert "inductor exploded" in info["compile_error"]
    assert info["compile_fallback_phase"] == phase
    warned = [e for e in events if e.kind == "log" and e.get("level") == "warning"]
    assert len(warned) == 1 and "running eager" in warned[0].get("message")
    steps = [(e.get("phase"), e.get("step")) for e in events if e.kind == "step"]
    assert steps == [("warmup", 0), ("measure", 0), ("measure", 1)]
    assert result.metric("loss") > 0


def test_a_compiler_failure_inside_the_measured_window_restarts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # calls 1-4 compile, 5-8 warm-up, 9-12 measured step 0 (compiled), 13: step 1 fails.
    _fake_compile(monkeypatch, 13)
    result, events = _run(tmp_path, _spec("lora", params={"compile": "layers", "save": False}))
    assert result.status == "ok" and result.info["compile_fallback_phase"] == "measure"
    restarted = result.info["measure_restarted"]
    assert (restarted["at_step"], restarted["discarded"], restarted["measured"]) == (1, 1, 1)
    windows = [e for e in events if e.kind == "window"]
    assert [w.get("name") for w in windows] == ["warmup", "measure_discarded", "measure"]
    measure = windows[-1]
    # the measured window starts after the fallback: only the eager step is in it
    failed_at = next(e.t_ns for e in events if e.kind == "log" and "restarted" in
                     str(e.get("message")))
    assert measure.get("t0_ns") >= failed_at
    last_step = [e for e in events if e.kind == "step"][-1]
    assert result.metric("al_s") == pytest.approx(last_step.get("latency_s"))


def test_a_time_limit_inside_the_compiler_is_not_a_compiler_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor wraps what interrupts it (seen on an H200, 2026-11-27: `InductorError:
    TimeoutError`); the run must end, not fall back to eager."""
    from runners.engines.compilation import interrupted as _interrupted

    class BackendCompilerFailed(RuntimeError):
        def __init__(self, inner: Exception) -> None:
            super().__init__(f"backend raised {inner!r}")
            self.inner_exception = inner

    assert _interrupted(BackendCompilerFailed(TimeoutError("arm ran past its time limit")))
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert _interrupted(wrapped)
    assert not _interrupted(BackendCompilerFailed(RuntimeError("inductor exploded")))

    def compile_(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        def call(*a: Any, **k: Any) -> Any:
            raise BackendCompilerFailed(TimeoutError("arm ran past its time limit"))

        self._compiled_call_impl = call

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    with pytest.raises(BackendCompilerFailed):
        _run(tmp_path, _spec("lora", params={"compile": "layers", "save": False}))
