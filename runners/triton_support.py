"""What the Triton kernels of the runners share (runners.decode_attention, runners.scan_triton,
runners.rwkv_wkv): whether they can run here. Each module defines its kernels inside a
`functools.cache`d function on first use, so importing it never imports Triton (CPU builds of
torch come without it)."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def installed() -> bool:
    """The triton package is importable (looked up once)."""
    return importlib.util.find_spec("triton") is not None


def available() -> bool:
    """Triton is importable and torch sees a CUDA device."""
    return installed() and torch.cuda.is_available()
