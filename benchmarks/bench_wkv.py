"""RWKV's WKV recurrence, forward + backward of one layer, on a CUDA device: transformers'
fallback loop (`rwkv_linear_attention_cpu` on CUDA tensors, what RwkvForCausalLM trains
through without the hub kernel) against flash-linear-attention's fused RWKV-4 kernel, as
runners.kernels.rwkv_wkv runs it.

    python benchmarks/bench_wkv.py [--batch 8] [--seq 2048] [--channels 896]
                                   [--dtype bf16] [--loop-seq 128] [--skip-loop]

The Triton time is measured at the full shape. transformers' loop costs the same per time
step whatever the position (a fixed set of small kernels a step), so it is timed at
`--loop-seq` steps and scaled linearly to `--seq` (`loop_scaled_ms`; `loop_ms` is the time
as measured). The error is the Triton result against the float64 reference loop at the full
shape: max |difference| / max |reference|, for the output and each gradient. Prints one JSON
line; exits 2 with one line when there is no CUDA device or no fla-core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runners.kernels import rwkv_wkv  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def inputs(b: int, T: int, C: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    time_decay = torch.rand(C, generator=g) * 8 - 5  # transformers' init spans -5..3
    time_first = torch.randn(C, generator=g) * 0.5 + 0.3
    key = torch.randn(b, T, C, generator=g) * 3
    value = torch.randn(b, T, C, generator=g)
    gy = torch.randn(b, T, C, generator=g)
    return [time_decay.cuda(), time_first.cuda(), key.cuda().to(dtype),
            value.cuda().to(dtype), gy.cuda().to(dtype)]


def fwd_bwd(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor]
            ) -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().requires_grad_() for t in tensors[:4]]
    y = fn(*leaves)
    return (y.detach(), *torch.autograd.grad(y, leaves, tensors[4]))


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up (compiles the Triton kernels on the first call)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--channels", type=int, default=896)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--loop-seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-loop", action="store_true",
                    help="time the Triton kernels only (no transformers loop, no error check)")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not rwkv_wkv.available():
        print(f"bench_wkv: needs a CUDA device and {rwkv_wkv.FLA_PACKAGE} (missing here)",
              file=sys.stderr)
        return 2
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    dtype = DTYPES[args.dtype]
    b, T, C = args.batch, args.seq, args.channels
    full = inputs(b, T, C, dtype)
    short = [t if t.dim() == 1 else t[:, :args.loop_seq].contiguous() for t in full]

    def loop(*xs: torch.Tensor) -> torch.Tensor:
        return rwkv_linear_attention_cpu(*xs)[0]

    triton_ms = timed_ms(lambda: fwd_bwd(rwkv_wkv.wkv, full), args.repeats)
    if args.skip_loop:
        print(json.dumps({"device": torch.cuda.get_device_name(), "shape": [b, T, C],
                          "dtype": args.dtype, "kernel": rwkv_wkv.describe(),
                          "triton_ms": round(triton_ms, 3)}))
        return 0
    loop_ms = timed_ms(lambda: fwd_bwd(loop, short), max(1, args.repeats // 2))
    torch.cuda.reset_peak_memory_stats()
    got = fwd_bwd(rwkv_wkv.wkv, full)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    want = fwd_bwd(rwkv_wkv.wkv_reference, [t.double() for t in full])
    names = ("y", "time_decay", "time_first", "key", "value")
    errors = {n: ((g.double() - w).abs().max() / w.abs().max()).item()
              for n, g, w in zip(names, got, want, strict=True)}
    loop_scaled_ms = loop_ms * T / args.loop_seq
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "shape": [b, T, C], "dtype": args.dtype,
        "kernel": rwkv_wkv.describe(), "loop_seq": args.loop_seq,
        "loop_ms": round(loop_ms, 3), "loop_scaled_ms": round(loop_scaled_ms, 3),
        "triton_ms": round(triton_ms, 3), "speedup": round(loop_scaled_ms / triton_ms, 1),
        "triton_peak_gib": round(peak_gib, 3),
        "max_rel_error": {n: float(f"{e:.3g}") for n, e in errors.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
