"""Runs the Triton kernels of the runners in Triton's interpreter on CPU tensors (our Mamba
selective scan; flash-linear-attention's RWKV-4 WKV, where fla-core is installed) and prints,
as one JSON object, the relative error of the output and of every gradient against the torch
references (float64 for the WKV). A script, not a test module:
`test_triton_interpreted.py` runs it in a fresh process, since TRITON_INTERPRET must be set
before the kernels are defined.

Triton 3.6's interpreter converts a one-element block to a Python int with `int(array)`,
which numpy 2 refuses for arrays of one dimension; `_index_shim` makes that conversion take
the element (`.item()`), for any shape with one element.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402


def _index_shim() -> None:
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def scan_case(b: int, d: int, T: int, n: int, block_d: int, chunk: int) -> dict[str, float]:
    from runners.kernels import scan_triton
    from runners.models import baselines

    g = torch.Generator().manual_seed(b * 1000 + d + T + n)
    inputs = [torch.randn(b, d, T, generator=g),
              torch.rand(b, T, d, generator=g).transpose(1, 2) * 0.5 + 0.01,
              -torch.rand(d, n, generator=g) - 0.1,
              torch.randn(b, T, n, generator=g), torch.randn(b, T, n, generator=g)]
    gy = torch.randn(b, d, T, generator=g)
    ours = [x.clone().requires_grad_() for x in inputs]
    ref = [x.clone().requires_grad_() for x in inputs]
    y = scan_triton.selective_scan_triton(*ours, block_d=block_d, chunk=chunk)
    grads = torch.autograd.grad(y, ours, gy)
    y_ref = baselines.selective_scan(*ref)
    ref_grads = torch.autograd.grad(y_ref, ref, gy)
    names = ("y", "u", "delta", "A", "B", "C")
    return {name: _rel(a, b) for name, a, b in zip(names, (y, *grads), (y_ref, *ref_grads),
                                                   strict=True)}


def wkv_case(b: int, T: int, C: int, key_scale: float) -> dict[str, float]:
    from runners.kernels import rwkv_wkv

    g = torch.Generator().manual_seed(T + C)
    inputs = [torch.rand(C, generator=g) * 8 - 5, torch.randn(C, generator=g) * 0.5 + 0.3,
              torch.randn(b, T, C, generator=g) * key_scale, torch.randn(b, T, C, generator=g)]
    gy = torch.randn(b, T, C, generator=g)
    ours = [x.clone().requires_grad_() for x in inputs]
    y = rwkv_wkv.kernel_wkv(*ours)
    grads = torch.autograd.grad(y, ours, gy)
    ref = [x.double().requires_grad_() for x in inputs]
    y_ref = rwkv_wkv.wkv_reference(*ref)
    ref_grads = torch.autograd.grad(y_ref, ref, gy.double())
    names = ("y", "time_decay", "time_first", "key", "value")
    return {name: _rel(a, b) for name, a, b in zip(names, (y, *grads), (y_ref, *ref_grads),
                                                   strict=True)}


def main() -> int:
    _index_shim()
    out = {
        # channels not a multiple of the block, steps not a multiple of the chunk
        "scan_b2_d12_T45_n4": scan_case(2, 12, 45, 4, block_d=8, chunk=16),
        # a state size that is not a power of two (padded), a chunk that is not either
        "scan_b1_d5_T23_n3": scan_case(1, 5, 23, 3, block_d=4, chunk=7),
    }
    if importlib.util.find_spec("fla") is not None:
        out["wkv_b2_T40_C40_k1"] = wkv_case(2, 40, 40, 1.0)
        # keys up to ~100: the max-tracking form; 20 channels, a partial block
        out["wkv_b1_T30_C20_k30"] = wkv_case(1, 30, 20, 30.0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
