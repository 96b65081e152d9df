"""What the Triton kernels of the runners share (runners.kernels.decode_attention,
runners.kernels.scan_triton,
runners.kernels.rwkv_wkv): whether they can run here. Each module defines its kernels inside a
`functools.cache`d function on first use, so importing it never imports Triton (CPU builds of
torch come without it)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any

import torch


@functools.cache
def installed() -> bool:
    """The triton package is importable (looked up once)."""
    return importlib.util.find_spec("triton") is not None


def available() -> bool:
    """Triton is importable and torch sees a CUDA device."""
    return installed() and torch.cuda.is_available()


def launching_on(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Make `t`'s GPU the current device for a kernel launch: Triton launches on the current
    device, not on its arguments' (a no-op for CPU tensors, as in the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
