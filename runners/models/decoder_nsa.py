"""`nsa`: the decoder's native sparse attention module (Yuan et al. 2025, arXiv 2502.11089).

The math and the kernels are runners.kernels.nsa's (flash-linear-attention's Triton kernel on
CUDA, a torch reference elsewhere). This module holds the projections: q, k and v in one
matmul as the baseline's, rotary positions on q and k, and the gates, sigmoid(W_g x), three
per query head (compressed, selected, window), as flash-linear-attention's NSA layer.

Heads: fla's kernel groups 16 query heads on each K/V head, so NSA keeps the card's head
width and has one K/V head per 16 of the card's heads (at least one) with 16 query heads on
each. At the Qwen2.5-0.5B shape (14 heads of 64, 2 K/V heads) that is 16 query heads over one
K/V head: the fused q/k/v projection is exactly as wide as the baseline's (1024 + 2 x 64 =
896 + 4 x 64), the output projection reads 1024 instead of 896 features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from runners.kernels.nsa import nsa
from runners.models.decoder_blocks import split_qkv

if TYPE_CHECKING:
    from runners.models.decoder_config import DecoderConfig, Positional


class SparseAttention(nn.Module):
    """`nsa`: compressed, selected and sliding-window attention mixed by learned gates."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.q_heads, cfg.kv_heads, cfg.head_dim
        self.shape = cfg.nsa_shape
        width = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, width, bias=cfg.qkv_bias)
        self.gate = nn.Linear(cfg.d_model, 3 * self.n_heads, bias=False)
        self.out = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, pos: Positional) -> Tensor:
        b, t, _ = x.shape
        h, d = self.n_heads, self.head_dim
        q, k, v = split_qkv(self.qkv(x), h, self.n_kv, d, pos)
        gates = torch.sigmoid(self.gate(x)).view(b, t, h, 3)
        y = nsa(q, k, v, gates, self.shape)
        return self.out(y.reshape(b, t, h * d))
