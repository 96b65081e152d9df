"""Mamba's selective scan on one GPU: the chunked torch recurrence (runners.models.baselines)
against
the Triton kernels (runners.kernels.scan_triton), forward + backward of one layer.

    python benchmarks/bench_scan.py [--batch 8 --inner 1792 --seq 2048 --state 16]
        [--dtype bf16|fp32] [--repeats 3] [--configs 32:64:4,16:64:2,...]

Default shape: one layer of Mamba at the Qwen2.5-0.5B shape, batch 8 x 2048, with u, B and C
in bf16 (as under bf16 autocast) and delta fp32 channel-major (as the mixer makes it). Times
are CUDA-event medians of `--repeats` calls after one warm-up (which also compiles the
kernels). The chunked torch path is timed once per call of this script (a Python loop over
every time step: seconds). `--configs` also times the Triton scan at each BLOCK_D:CHUNK:WARPS
given. Prints one JSON line: times in ms, the speed-up, and the largest relative error
(max |triton - torch| / max |torch|) of y and each gradient; exits 1 when an error is over the
tolerance (1e-4 for fp32 inputs, 1e-2 for bf16, whose gradients round to bf16), 2 without
CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from runners.kernels import scan_triton  # noqa: E402
from runners.models import baselines  # noqa: E402

NAMES = ("y", "u", "delta", "A", "B", "C")


def make_inputs(b: int, d: int, T: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(b, d, T, device="cuda", generator=g).to(dtype)
    delta = (torch.rand(b, T, d, device="cuda", generator=g) * 0.1 + 0.001).transpose(1, 2)
    A = -torch.exp(torch.randn(d, n, device="cuda", generator=g) * 0.5)
    Bm = torch.randn(b, T, n, device="cuda", generator=g).to(dtype)
    Cm = torch.randn(b, T, n, device="cuda", generator=g).to(dtype)
    gy = torch.randn(b, d, T, device="cuda", generator=g)
    return u, delta, A, Bm, Cm, gy


def step(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
         ) -> tuple[torch.Tensor, ...]:
    """Forward and backward of `fn`: (y, grads of u, delta, A, B, C)."""
    leaves = [x.detach().requires_grad_() for x in inputs[:5]]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, inputs[5])
    return (y.detach(), *grads)


def time_ms(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
            repeats: int) -> float:
    step(fn, inputs)  # warm-up (and Triton's compile)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(fn, inputs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--inner", type=int, default=1792)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-repeats", type=int, default=1)
    ap.add_argument("--configs", default="", help="BLOCK_D:CHUNK:WARPS,... to time as well")
    args = ap.parse_args()
    if not (torch.cuda.is_available() and scan_triton.available()):
        print("bench_scan: needs a CUDA device and Triton (none here)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    inputs = make_inputs(args.batch, args.inner, args.seq, args.state, dtype)

    def chunked(*xs: torch.Tensor) -> torch.Tensor:
        return baselines._SelectiveScan.apply(*xs)

    torch_ms = time_ms(chunked, inputs, args.torch_repeats)
    triton_ms = time_ms(scan_triton.selective_scan_triton, inputs, args.repeats)
    ref = step(chunked, inputs)
    got = step(scan_triton.selective_scan_triton, inputs)
    errors = {name: ((a.float() - r.float()).abs().max() / r.float().abs().max()).item()
              for name, a, r in zip(NAMES, got, ref, strict=True)}
    configs = {}
    for spec in filter(None, args.configs.split(",")):
        block_d, chunk, warps = (int(x) for x in spec.split(":"))

        def run(*xs: torch.Tensor, _c: tuple[int, int, int] = (block_d, chunk, warps)
                ) -> torch.Tensor:
            return scan_triton.selective_scan_triton(*xs, block_d=_c[0], chunk=_c[1],
                                                     num_warps=_c[2])

        configs[spec] = round(time_ms(run, inputs, args.repeats), 3)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    out = {"shape": {"batch": args.batch, "inner": args.inner, "seq": args.seq,
                     "state": args.state, "dtype": args.dtype},
           "device": torch.cuda.get_device_name(),
           "default_config": f"{scan_triton.BLOCK_D}:{scan_triton.CHUNK}:"
                             f"{scan_triton._config(None, None)[1]}",
           "torch_chunked_ms": round(torch_ms, 3), "triton_ms": round(triton_ms, 3),
           "speedup": round(torch_ms / triton_ms, 1),
           "max_rel_error": {k: float(f"{v:.3g}") for k, v in errors.items()},
           "tolerance": tol, "configs_ms": configs}
    print(json.dumps(out))
    return 0 if max(errors.values()) <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
