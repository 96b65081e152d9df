"""Runs flash-linear-attention's NSA (`fla.ops.nsa.parallel_nsa`, package fla-core) in Triton's
interpreter on CPU tensors and prints, as one JSON object, the largest absolute difference of
its output and of every gradient from runners.kernels.nsa's torch reference. A script, not a
test module: test_runner_nsa.py runs it in a fresh process where fla-core is installed, since
TRITON_INTERPRET must be set before the kernels are defined.

Two shims for the interpreter: Triton's autotuner would time each config on a GPU (here every
config "takes" 0 s, so the first runs), and Triton 3.6 turns a one-element block into an int
with `int(array)`, which numpy 2 refuses (interpreted_kernels.py has the same shim).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402


def _shims() -> None:
    from triton.runtime import autotuner, interpreter

    autotuner.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]
    original = interpreter._patch_lang_tensor

    def patch(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch


def main() -> None:
    warnings.filterwarnings("ignore")
    _shims()
    from fla.ops.nsa import parallel_nsa

    from runners.kernels.nsa import NSAShape, nsa_reference

    gen = torch.Generator().manual_seed(0)
    b, t, h, d, shape = 1, 80, 1, 16, NSAShape(16, 4, 0)  # 5 blocks, 4 chosen
    xs = [torch.randn(b, t, 16 * h, d, generator=gen), torch.randn(b, t, h, d, generator=gen),
          torch.randn(b, t, h, d, generator=gen), torch.rand(b, t, 16 * h, 3, generator=gen)]
    gy = torch.randn(b, t, 16 * h, d, generator=gen)
    ours = [x.clone().requires_grad_() for x in xs]
    theirs = [x.clone().requires_grad_() for x in xs]
    y = nsa_reference(*ours, shape)
    q, k, v, g = theirs
    y_fla = parallel_nsa(q, k, v, g_cmp=g[..., 0], g_slc=g[..., 1], block_counts=4,
                         block_size=16, window_size=0)
    grads = torch.autograd.grad(y, ours, gy)
    grads_fla = torch.autograd.grad(y_fla, theirs, gy)
    names = ("y", "q", "k", "v", "gates")
    errors = {n: (a - b_).abs().max().item() for n, a, b_ in
              zip(names, (y, *grads), (y_fla, *grads_fla), strict=True)}
    print(json.dumps(errors))


if __name__ == "__main__":
    main()
