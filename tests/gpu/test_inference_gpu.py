"""The inference runner on a CUDA GPU: every technique, the graph engine, and a real runner
subprocess. Run with `python -m pytest -m gpu tests/gpu/test_inference_gpu.py`.

fp8 on CUDA runs quanto's Marlin kernel, whose extension takes more than a minute to build
the first time; set EFFICIENTLLM_GPU_FP8=1 to include it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from runners.engines.decode import ENGINES
from runners.families.base import RunContext
from runners.families.inference import InferenceConfig, InferenceFamily
from runners.models import build as model_mod
from runners.models import catalog
from runners.protocol import Event, RunResult, RunSpec
from runners.system.eventlog import EventLog

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(seq_len=32, new_tokens=16, steps=3, warmup=1)


def _run(tmp_path: Path, technique: str, model: str = "tiny", **params: object) -> RunResult:
    spec = RunSpec(run_id=f"gpu-{technique}", family="inference", technique=technique,
                   model=model, device="cuda:0", params=dict(params), **SMALL)  # type: ignore[arg-type]
    config = InferenceConfig.from_spec(spec, "cuda:0")
    ctx = RunContext(spec, tmp_path, tmp_path, "cuda:0", EventLog(tmp_path / "events.jsonl"))
    family = InferenceFamily(config, catalog.model_card(model), ctx)
    family.validate()
    return family.run()


TECHNIQUES = ["fp32", "bf16", "fp16", "int8", "int4", "w8a8"]
if os.environ.get("EFFICIENTLLM_GPU_FP8") == "1":
    TECHNIQUES.append("fp8")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    return {t: _run(tmp_path_factory.mktemp(t), t) for t in TECHNIQUES}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_every_technique_runs_on_the_fused_engine(results: dict[str, RunResult],
                                                 technique: str) -> None:
    result = results[technique]
    v = {m.name: m.value for m in result.metrics}
    assert result.status == "ok"
    assert result.info["engine"] == "fused", result.info.get("engine_fallback")
    detail = result.info["engine_detail"]
    assert detail["cuda_graph"] is True
    floating = technique in ("fp32", "bf16", "fp16")
    # float weights: fused projections, compiled step; quantized: their own modules, eager
    assert (detail["fused_projections"], detail["compiled"]) == (floating, floating)
    assert 0 < v["peak_allocated_gib"] <= v["peak_reserved_gib"]
    assert v["tpot_s"] > 0 and v["ttft_s"] > 0 and v["decode_tokens_per_s"] > 0
    assert v["eval_ppl"] is not None and v["mcr"] is not None
    if technique not in ("fp32", "bf16", "fp16"):
        assert v["weight_bytes"] < v["reference_weight_bytes"]
        assert result.info["quantization"]["kernels"]
    # NVML energy at the window edges; a window shorter than the counter's update period
    # reads as unknown (None), never as 0 J
    assert v["energy_j"] is None or v["energy_j"] > 0
    assert v["prefill_energy_j"] is None or v["prefill_energy_j"] > 0


def test_graph_replays_the_static_loop_exactly() -> None:
    built = model_mod.build(catalog.model_card("qwen2.5-0.5b"), torch.bfloat16, "cuda:0", 0)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    sync = torch.cuda.synchronize
    _, static = ENGINES["static"](built.model, 20, sync, 0)(ids)
    graph = ENGINES["graph"](built.model, 20, sync, 0)
    _, first = graph(ids)
    _, again = graph(ids)  # a second request reuses the captured graph and cache
    assert torch.equal(first, static) and torch.equal(again, static)


def test_loop_static_and_graph_agree_in_fp32() -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cuda:0", 0)
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1)).cuda()
    outs = [ENGINES[name](built.model, 12, torch.cuda.synchronize, 258)(ids)[1]
            for name in ("loop", "static", "graph", "eager")]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.parametrize("technique", ["int8-ao", "int4-ao"])
def test_torchao_techniques_run_or_say_why(tmp_path: Path, technique: str) -> None:
    """torchao's kernels depend on the build matching this torch: a technique either runs
    through the runner with all its metrics or fails as `unsupported` naming torchao."""
    from runners.errors import Unsupported

    try:
        result = _run(tmp_path, technique)
    except Unsupported as e:
        print(f"{technique}: unsupported here: {e}")
        assert "torchao" in str(e) or technique in str(e)
        return
    v = {m.name: m.value for m in result.metrics}
    assert result.status == "ok" and result.info["engine"] == "fused"
    assert result.info["quantization"]["backend"] == "torchao"
    assert v["weight_bytes"] < v["reference_weight_bytes"] and v["decode_tokens_per_s"] > 0
    print(f"{technique}: ok, kernels {result.info['quantization']['kernels']}")


def test_lean_decoder_matches_the_transformers_forward_in_bf16() -> None:
    from transformers import DynamicCache

    from runners.engines.decode import cache_kwarg
    from runners.engines.fused import LeanDecoder

    built = model_mod.build(catalog.model_card("qwen2.5-0.5b"), torch.bfloat16, "cuda:0", 0)
    model = built.model
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    feed = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1)).cuda()
    cache = DynamicCache()
    with torch.no_grad():
        ref = [model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]]
        for j in range(feed.shape[1]):
            ref.append(model(input_ids=feed[:, j:j + 1], use_cache=True,
                             **{cache_kwarg(model): cache}).logits[:, -1])
        lean = LeanDecoder(model, 2, 32)
        lean.keep_logits = True
        lean.prefill(ids)
        got = [lean.logits]
        for j in range(feed.shape[1]):
            lean.tok.copy_(feed[:, j:j + 1])
            lean.step()
            got.append(lean.logits)
    for r, g in zip(ref, got, strict=True):
        assert g is not None
        err = ((g.float() - r.float()).norm() / r.float().norm()).item()
        assert err < 0.02, err  # bf16 rounding of fused vs separate matmuls


def _teacher_forced(decoder: Any, ids: torch.Tensor, feed: torch.Tensor) -> list[torch.Tensor]:
    """Logits of the prefill and of each fed token, every one in float32."""
    decoder.keep_logits = True
    with torch.no_grad():
        decoder.prefill(ids)
        out = [decoder.logits.float()]
        for j in range(feed.shape[1]):
            decoder.tok.copy_(feed[:, j:j + 1])
            decoder.step()
            out.append(decoder.logits.float())
    return out


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).norm() / x.norm()).item() for x, y in zip(a, b, strict=True))


def test_decode_attention_kernel_matches_the_torch_path_in_fp32() -> None:
    """The Triton kernel (rotary + cache write + GQA attention) against the torch ops over
    more positions than one block of the kernel's loop, teacher-forced, in float32."""
    from runners.engines.fused import LeanDecoder

    model = model_mod.build(catalog.model_card("tiny"), torch.float32, "cuda:0", 0).model
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    feed = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1)).cuda()
    ref = LeanDecoder(model, 2, 160, attention="torch")
    ker = LeanDecoder(model, 2, 160, attention="triton")
    assert ker.describe()["decode_attention"] == "triton"
    assert _rel(_teacher_forced(ref, ids, feed), _teacher_forced(ker, ids, feed)) < 1e-4
    for a, b in zip(ref.k_cache, ker.k_cache, strict=True):  # the kernel wrote the keys
        assert ((a - b).norm() / a.norm()).item() < 1e-5


@pytest.mark.parametrize("model_id", ["qwen2.5-0.5b", "qwen2.5-7b"])
def test_decode_attention_kernel_in_bf16_is_as_accurate_as_the_torch_ops(model_id: str) -> None:
    """Against a float32 reference of the same weights, the kernel's bf16 logits are no
    further off than the torch ops' bf16 logits (it rotates and scores in float32)."""
    from runners.engines.fused import LeanDecoder

    card = catalog.model_card(model_id)
    if model_id == "qwen2.5-7b":  # the 7B shape's grouping (28 / 4), on 4 layers
        card = dataclasses.replace(card, num_layers=4)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    feed = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1)).cuda()
    exact = model_mod.build(card, torch.float32, "cuda:0", 0).model
    ref = _teacher_forced(LeanDecoder(exact, 2, 160, attention="torch"), ids, feed)
    del exact
    model = model_mod.build(card, torch.bfloat16, "cuda:0", 0).model  # the rounding of it
    ops = _rel(ref, _teacher_forced(LeanDecoder(model, 2, 160, attention="torch"), ids, feed))
    ker = _rel(ref, _teacher_forced(LeanDecoder(model, 2, 160, attention="triton"), ids, feed))
    print(f"{model_id}: bf16 vs fp32 logits, torch ops {ops:.4f}, kernel {ker:.4f}")
    assert ker <= 1.1 * ops + 1e-3, (ker, ops)


def test_fused_engine_compiled_and_captured_agrees_with_the_loop_in_fp32() -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cuda:0", 0)
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(2)).cuda()
    sync = torch.cuda.synchronize
    _, loop = ENGINES["loop"](built.model, 12, sync, 258)(ids)
    fused = ENGINES["fused"](built.model, 12, sync, 258)
    _, first = fused(ids)
    _, again = fused(ids)
    detail = fused.describe()
    assert detail["compiled"] and detail["cuda_graph"] and detail["fused_projections"]
    assert torch.equal(first, loop) and torch.equal(again, loop)


def test_runner_subprocess_defaults_to_the_fused_engine(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "gpu-sub"
    run_dir.mkdir(parents=True)
    spec = RunSpec(run_id="gpu-sub", family="inference", technique="int4", model="tiny",
                   device="auto", params={"peak_tflops": 989.0, "mem_bw_gbps": 3000.0}, **SMALL)  # type: ignore[arg-type]
    (run_dir / "spec.json").write_text(spec.to_json())
    env = dict(os.environ, EFFICIENTLLM_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    events = [Event.from_json(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0].get("device") == "cuda:0"
    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases[-4:] == ["measure", "prefill", "eval", "done"] and "quantize" in phases
    result = RunResult.from_dict(events[-1].fields)
    v = {m.name: m.value for m in result.metrics}
    assert result.info["engine"] == "fused", result.info.get("engine_fallback")
    assert v["mfu"] is not None and 0 < v["mfu"] < 1
    assert v["roofline_fraction"] is not None and v["roofline_fraction"] > 0
    window = next(e for e in events if e.kind == "window" and e.get("name") == "measure")
    assert window.get("energy_source") == "nvml"
    assert window.get("energy_j") is None or window.get("energy_j") > 0
