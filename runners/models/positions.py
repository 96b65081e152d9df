"""Positional encodings of runners.models.decoder: rotary tables and their
rotation, Vaswani et al.'s sinusoids, and ALiBi's head slopes and attention bias."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def rope_tables(seq_len: int, dim: int, theta: float, device: torch.device,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin [seq_len, dim] of rotary embeddings (the rotate-half layout of Llama/Qwen)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotated(x: Tensor, sin: Tensor, sign: float) -> Tensor:
    """swap_halves(x) x sign x (-sin | sin): rotate_half(x) x sin without a negation pass
    over x (the tables are symmetric across halves, so the sign moves onto them)."""
    half = x.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return torch.cat((x[..., half:], x[..., :half]), dim=-1) * (signed * sign)


class _Rotary(torch.autograd.Function):
    """y = x cos + rotate_half(x) sin in three passes; its backward is the inverse rotation,
    g cos - rotate_half(g) sin (rotate_half is antisymmetric and the tables commute with it),
    three passes again, with nothing saved but the tables."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(_rotated(x, sin, 1.0), x, cos)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return torch.addcmul(_rotated(grad, sin, -1.0), grad, cos), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., dim] by position: x cos + rotate_half(x) sin, the tables broadcast to x
    ([T, 1, dim] for the [B, T, heads, dim] layout the attention modules use, before their
    transpose: elementwise passes over a contiguous layout rather than a transposed view)."""
    return _Rotary.apply(x, cos, sin)


def sinusoid_table(seq_len: int, dim: int, device: torch.device) -> Tensor:
    """Vaswani et al.'s absolute encoding [seq_len, dim]: sin on even, cos on odd features."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / dim))
    table = torch.zeros(seq_len, dim, device=device)
    table[:, 0::2] = torch.sin(pos * rate)
    table[:, 1::2] = torch.cos(pos * rate)[:, : dim // 2]
    return table


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): 2^(-8 i / n), i = 1..n, for n a power of two;
    otherwise the slopes of the largest power of two p < n plus every other slope of 2p."""

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(n_heads)))
    if p == n_heads:
        return geometric(n_heads)
    return geometric(p) + geometric(2 * p)[0::2][: n_heads - p]


def alibi_bias(n_heads: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[1, heads, T, T]: -slope_h x (i - j) for keys j <= query i, -inf for j > i."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    offset = pos[None, :] - pos[:, None]  # j - i: <= 0 for the past
    slopes = torch.tensor(alibi_slopes(n_heads), device=device, dtype=torch.float32)
    bias = slopes[:, None, None] * offset
    bias = bias.masked_fill(offset > 0, float("-inf"))
    return bias[None].to(dtype)
