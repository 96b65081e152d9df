"""The inference runner on a CUDA GPU: every technique, the graph engine, and a real runner
subprocess. Run with `python -m pytest -m gpu tests/gpu/test_inference_gpu.py`.

fp8 on CUDA runs quanto's Marlin kernel, whose extension takes more than a minute to build
the first time; set EFFICIENTLLM_GPU_FP8=1 to include it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runners import catalog
from runners import model as model_mod
from runners.decode import ENGINES
from runners.eventlog import EventLog
from runners.family import RunContext
from runners.inference import InferenceConfig, InferenceFamily
from runners.protocol import Event, RunResult, RunSpec

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
def test_every_technique_runs_on_the_graph_engine(results: dict[str, RunResult],
                                                 technique: str) -> None:
    result = results[technique]
    v = {m.name: m.value for m in result.metrics}
    assert result.status == "ok"
    assert result.info["engine"] == "graph", result.info.get("engine_fallback")
    assert result.info["engine_detail"]["cuda_graph"] is True
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


def test_runner_subprocess_defaults_to_the_graph_engine(tmp_path: Path) -> None:
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
    assert result.info["engine"] == "graph"
    assert v["mfu"] is not None and 0 < v["mfu"] < 1
    assert v["roofline_fraction"] is not None and v["roofline_fraction"] > 0
    window = next(e for e in events if e.kind == "window" and e.get("name") == "measure")
    assert window.get("energy_source") == "nvml"
    assert window.get("energy_j") is None or window.get("energy_j") > 0
