"""Fine-tuning on a real GPU: the chunked loss under bf16 autocast keeps its numbers and its
memory promise, and the runner trains on CUDA with bf16, peak memory, MFU and energy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runners.engines import xent
from runners.families.base import RunContext
from runners.families.finetuning import FinetuningConfig, FinetuningFamily
from runners.models import catalog
from runners.protocol import EVENTS_FILE, RunResult, RunSpec
from runners.system.eventlog import EventLog

pytestmark = [pytest.mark.gpu]
torch = pytest.importorskip("torch")
DEVICE = "cuda:0"


def _rel(a: Any, b: Any) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_chunked_loss_on_cuda_matches_fp32_and_bounds_memory() -> None:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    n, h, v = 16384, 256, 32000
    hidden = torch.randn(n, h, device=DEVICE, generator=g).requires_grad_(True)
    head = torch.nn.Linear(h, v, bias=False, device=DEVICE)
    y = torch.randint(0, v, (n,), device=DEVICE, generator=g)

    ref = torch.nn.functional.cross_entropy(head(hidden.double().float()), y, reduction="sum")
    ref.backward()
    ref_h, ref_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.zero_grad()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, count = xent.chunked_cross_entropy(hidden, head, y, chunk_rows=512)
    total.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert count == n
    assert abs(total.item() - ref.item()) / ref.item() < 1e-2
    assert _rel(hidden.grad, ref_h) < 3e-2 and _rel(head.weight.grad, ref_w) < 3e-2
    # Unchunked, fp32 logits and their gradient alone would take 2 x 2 GiB here.
    full_logits_fp32 = n * v * 4
    assert extra < 0.3 * full_logits_fp32, f"{extra / 2**20:.0f} MiB over the inputs"


def _run(tmp_path: Path, technique: str, **params: Any) -> RunResult:
    spec = RunSpec(run_id=f"gpu-{technique}", family="finetuning", technique=technique,
                   model="tiny", device=DEVICE, seq_len=128, batch_size=4, steps=3, warmup=1,
                   params={"eval_batches": 1, **params})
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    log = EventLog(run_dir / EVENTS_FILE)
    family = FinetuningFamily(FinetuningConfig.from_spec(spec, DEVICE),
                              catalog.model_card("tiny"),
                              RunContext(spec, run_dir, tmp_path, DEVICE, log))
    family.validate()
    try:
        return family.run()
    finally:
        log.close()


@pytest.mark.parametrize("technique", ["full", "lora", "dora", "freeze", "prompt-tuning"])
def test_trains_on_cuda_in_bf16_with_memory_and_mfu(tmp_path: Path, technique: str) -> None:
    result = _run(tmp_path, technique, compile="off")  # eager: compiling is the next test's
    assert result.status == "ok"
    info = result.info
    assert info["compile"] == "off"
    assert info["precision"] == "bf16" and info["optimizer_fused"] is True
    assert info["base_dtype"] == "bfloat16"
    assert info["master_weights"] is (technique in ("full", "freeze"))
    assert info["autocast"] is (technique not in ("full", "freeze"))
    for name in ("peak_allocated_gib", "peak_reserved_gib", "mfu", "tokens_per_s", "st",
                 "loss", "eval_loss"):
        value = result.metric(name)
        assert value is not None and value > 0, name
    assert result.metric("mfu") < 1.0
    assert info["peak_tflops"] > 50 and info["peak_tflops_source"].startswith("measured")
    if result.metric("energy_j") is None:
        assert info["energy_note"] is None or isinstance(info["energy_note"], str)
    assert info["adapter_files"]


def test_compile_auto_compiles_lora_blocks_on_cuda_before_the_warmup(tmp_path: Path) -> None:
    """`auto` is `layers` for lora on CUDA: the blocks compile in the compile phase (the first
    block's input needs no gradient under LoRA, the others' do: two graphs), nothing
    recompiles in the measured window, and it trains."""
    result = _run(tmp_path, "lora")
    assert result.status == "ok"
    info = result.info
    assert info["compile_requested"] == "auto" and info["compile"] == "layers"
    assert info["compile_error"] is None, info["compile_error"]
    assert info["compile_s"] > 0 and info["compile_graphs"]["compile"] >= 1
    assert info["compile_graphs"]["measure"] == 0
    assert result.metric("loss") is not None and result.metric("tokens_per_s") > 0


@pytest.mark.slow
def test_qlora_on_cuda_builds_quanto_kernels_then_trains(tmp_path: Path) -> None:
    """The first qlora run on a machine builds optimum-quanto's CUDA extension (minutes)."""
    result = _run(tmp_path, "qlora")
    assert result.status == "ok"
    quantization = result.info["quantization"]
    assert quantization["weights"] == "qint4" and quantization["cuda_kernels"]
    assert result.metric("loss") is not None and result.metric("tokens_per_s") > 0
