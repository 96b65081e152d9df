"""Pretraining on a CUDA device: bf16 autocast, flash / efficient SDPA, fused AdamW, the
measured matmul peak (MFU) and NVML energy, in-process and through the runner process;
torch.compile of the decoder (auto: on), grouped K/V on flash, the fp32-accumulating loss
GEMM, Mamba's scan (the Triton kernels against the chunked torch recurrence and float64).
Small shapes: seconds (plus one compile of the tiny block), not a benchmark
(benchmarks/bench_pretraining.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners.families.base import RunContext, family_class
from runners.models import catalog
from runners.protocol import EVENTS_FILE, Event, RunResult, RunSpec
from runners.system.eventlog import EventLog

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
    r = train(tmp_path, technique, peak_tflops=700.0, compile="false")  # eager: seconds
    assert r.status == "ok"
    assert math.isfinite(r.metric("loss"))  # type: ignore[arg-type]
    energy = r.metric("energy_j")  # two short steps: None (with a note) rather than 0 J
    assert energy is None or energy > 0
    assert r.info["peak_source"] == "given" and r.metric("mfu") is not None


def test_runner_process_on_cuda(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "gpu-mqa"
    run_dir.mkdir(parents=True)
    spec = RunSpec(run_id="gpu-mqa", family="pretraining", technique="mqa", model="tiny",
                   device="cuda:0", params={"peak_tflops": 700.0, "compile": "false"},
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


# --- compile, grouped K/V, the loss options, Mamba's scan ------------------------------------


def test_grouped_kv_reach_flash_eager_and_compiled() -> None:
    """enable_gqa must land on the flash kernel (only flash is allowed here), eagerly and
    under torch.compile, and equal attention over expanded K/V."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from runners.models.decoder_blocks import attend, expand_kv, native_gqa

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(2, 2, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    assert native_gqa(q, None)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), expand_kv(k, 8).float(), expand_kv(v, 8).float(), is_causal=True)
    compiled = torch.compile(attend)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        for fn in (attend, compiled):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            out = fn(qq, kk, vv, None)
            out.float().square().sum().backward()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            assert err < 1e-2, err
            assert kk.grad is not None and kk.grad.shape == k.shape


def test_compiled_run_matches_eager_and_compiles_before_the_windows(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "c").mkdir()
    eager = train(tmp_path / "e", "gqa", peak_tflops=700.0, compile="false")
    comp = train(tmp_path / "c", "gqa", peak_tflops=700.0)  # auto: on for CUDA decoders
    info = comp.info["compile"]
    assert info["enabled"] is True, info
    assert info["graph_breaks"] == 0 and info["graphs_compiled_in_measure"] == 0
    assert "compiled chunk" in comp.info["loss_impl"]
    assert "fp32-accumulating GEMM" in comp.info["loss_impl"]
    assert "unavailable" not in comp.info["loss_impl"]
    assert "enable_gqa" in comp.info["attention_kernel"]
    assert eager.info["compile"]["enabled"] is False
    for name in ("loss", "eval_ppl"):
        a, b = eager.metric(name), comp.metric(name)
        assert a is not None and b is not None and abs(a - b) / abs(a) < 2e-2, (name, a, b)


def test_fp32_gemm_loss_matches_the_plain_loss_on_cuda() -> None:
    import torch

    from runners.engines.xent import LossOptions, chunked_cross_entropy, fp32_gemm_status

    g = torch.Generator(device="cuda").manual_seed(1)
    h = torch.randn(3000, 256, device="cuda", generator=g)
    w = torch.randn(5000, 256, device="cuda", generator=g) * 0.05
    y = torch.randint(0, 5000, (3000,), device="cuda", generator=g)
    outs = []
    for options in (None, LossOptions(fp32_gemm=True)):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, _ = chunked_cross_entropy(hh, ww, y, chunk_rows=512, options=options)
        total.backward()
        outs.append((total.detach(), hh.grad, ww.grad))
    assert fp32_gemm_status()[0] is True, fp32_gemm_status()
    for a, b in zip(outs[0], outs[1], strict=True):
        assert ((a.float() - b.float()).norm() / a.float().norm()).item() < 1e-2


def test_mamba_scan_on_cuda_matches_float64_and_trains(tmp_path: Path) -> None:
    import torch

    from runners.models import baselines

    g = torch.Generator().manual_seed(2)
    b, d, T, n = 2, 64, 300, 16
    u, delta, A, Bm, Cm = (torch.randn(b, d, T, generator=g).double(),
                           torch.rand(b, d, T, generator=g).double() * 0.3 + 0.01,
                           -torch.rand(d, n, generator=g).double() - 0.1,
                           torch.randn(b, T, n, generator=g).double(),
                           torch.randn(b, T, n, generator=g).double())
    h = torch.zeros(b, d, n, dtype=torch.float64)
    ys = []
    for t in range(T):  # the recurrence in float64 on the CPU
        h = torch.exp(delta[:, :, t, None] * A) * h + \
            delta[:, :, t, None] * Bm[:, None, t] * u[:, :, t, None]
        ys.append((h * Cm[:, None, t]).sum(-1))
    ref = torch.stack(ys, -1)
    y = baselines.selective_scan(*(x.float().cuda() for x in (u, delta, A, Bm, Cm))).cpu()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    r = train(tmp_path, "mamba", peak_tflops=700.0)
    assert r.status == "ok" and math.isfinite(r.metric("loss"))  # type: ignore[arg-type]
    assert r.info["activation_checkpointing"] is True
    assert r.info["compile"]["enabled"] is False
    assert ("selective_scan" in r.info["kernels"]) != ("fused" in r.info["kernels"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_scan_matches_the_chunked_scan_and_float64(dtype: str) -> None:
    """Forward and all five gradients of runners.kernels.scan_triton against the chunked torch scan
    and the recurrence in float64; 100 channels and 300 steps: neither a multiple of the
    kernels' channel block nor of their chunk (the masks, the last partial chunk), delta
    channel-major as the mixer makes it, u, B and C in bf16 as under autocast."""
    import torch

    from runners.kernels import scan_triton
    from runners.models import baselines

    assert scan_triton.available()
    low = getattr(torch, dtype)
    g = torch.Generator().manual_seed(3)
    b, d, T, n = 2, 100, 300, 16
    assert d % scan_triton.BLOCK_D and T % scan_triton.CHUNK
    cpu = (torch.randn(b, d, T, generator=g).to(low),
           torch.rand(b, T, d, generator=g).transpose(1, 2) * 0.3 + 0.01,
           -torch.rand(d, n, generator=g) - 0.1,
           torch.randn(b, T, n, generator=g).to(low), torch.randn(b, T, n, generator=g).to(low))
    gy = torch.randn(b, d, T, generator=g)
    leaves = [x.detach().requires_grad_() for x in cpu]
    ref = baselines.scan_reference(*leaves)
    ref_grads = torch.autograd.grad(ref, leaves, gy.double())
    outs = {}
    for name, fn in (("triton", scan_triton.selective_scan_triton),
                     ("chunked", baselines.selective_scan)):
        xs = [x.cuda().detach().requires_grad_() for x in cpu]
        y = fn(*xs)
        assert y.dtype == torch.float32 and y.shape == (b, d, T)
        grads = torch.autograd.grad(y, xs, gy.cuda())
        for x, grad in zip(xs, grads, strict=True):
            assert grad.dtype == x.dtype and grad.shape == x.shape
        outs[name] = [t.cpu().double() for t in (y, *grads)]
    # bf16 gradients are rounded to bf16 (2^-9 relative), fp32 ones agree to rounding noise
    tol = 1e-5 if low == torch.float32 else 8e-3

    def rel(a, b):  # type: ignore[no-untyped-def]
        return ((a - b).norm() / b.norm()).item()

    names = ("y", "u", "delta", "A", "B", "C")
    for i, want in enumerate((ref, *ref_grads)):
        got, chunked = outs["triton"][i], outs["chunked"][i]
        limit = 1e-5 if i in (0, 2, 3) else tol  # y, delta and A are float32 throughout
        assert rel(got, want.detach()) < limit, (names[i], rel(got, want.detach()))
        assert rel(got, chunked) < limit, (names[i], rel(got, chunked))


@pytest.mark.parametrize("technique", ["mamba", "rwkv"])
def test_recurrence_triton_trains_like_the_torch_path(tmp_path: Path, technique: str) -> None:
    """`--set recurrence=triton`: the same run (seed, data, steps) on our Triton kernels and on
    the torch path ends at the same loss and held-out perplexity."""
    from runners.kernels import rwkv_wkv
    from runners.models import baselines

    if technique == "mamba" and baselines.mamba_fused_available():
        pytest.skip("mamba_ssm is installed: Mamba trains through its fused kernels")
    (tmp_path / "t").mkdir()
    (tmp_path / "c").mkdir()
    fast = train(tmp_path / "t", technique, peak_tflops=700.0, recurrence="triton")
    assert fast.status == "ok" and fast.info["recurrence"] == "triton"
    if technique == "mamba":
        assert fast.info["kernels"] == baselines.SCAN_PATH_TRITON
        assert fast.info["scan"].startswith("triton selective scan (runners.kernels.scan_triton)")
    else:
        assert fast.info["kernels"].startswith(rwkv_wkv.describe())
    slow = train(tmp_path / "c", technique, peak_tflops=700.0)
    assert slow.status == "ok" and slow.info["recurrence"] == "torch"
    assert "triton" not in slow.info["kernels"].lower()
    for name in ("loss", "eval_ppl"):
        a, b = fast.metric(name), slow.metric(name)
        assert a is not None and b is not None and abs(a - b) / abs(b) < 1e-2, (name, a, b)
