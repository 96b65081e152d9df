"""The attention and feed-forward modules of runners.models.decoder's blocks.

- `SelfAttention`: `mha`, `mqa` and `gqa` (1 <= KV heads <= heads), through `attend`.
- `LatentAttention`: `mla`, DeepSeek-V2 multi-head latent attention.
- `SwiGLU`: the dense FFN; `MoE`: dropless top-k routed SwiGLU experts.

`attend` is the one path to SDPA: flash with grouped K/V where `native_gqa`, else K/V
expanded to all query heads (see runners.models.decoder's module docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.models.positions import apply_rope

if TYPE_CHECKING:
    from runners.models.decoder_config import DecoderConfig, Positional


# --- attention ------------------------------------------------------------------------------


_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
"""`enable_gqa` of scaled_dot_product_attention (torch 2.5+)."""


def native_gqa(q: Tensor, bias: Tensor | None) -> bool:
    """Whether SDPA can take fewer K/V heads than query heads without falling back to its math
    kernel: the flash kernel (CUDA, bf16/fp16, no bias) reads grouped K/V natively; the
    memory-efficient and CPU kernels refuse unequal head counts."""
    return (_SDPA_HAS_GQA and bias is None and q.is_cuda
            and q.dtype in (torch.bfloat16, torch.float16))


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, KV, T, D] (KV divides H): flash SDPA
    with grouped K/V where `native_gqa`, else K/V expanded to H heads; ALiBi's bias as mask."""
    h, kv = q.shape[1], k.shape[1]
    if kv != h and native_gqa(q, bias):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    k, v = expand_kv(k, h), expand_kv(v, h)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def split_qkv(qkv: Tensor, h: int, kv: int, d: int, pos: Positional
              ) -> tuple[Tensor, Tensor, Tensor]:
    """q [B, T, H, D], k and v [B, T, KV, D] from one fused projection [B, T, (H + 2KV) D],
    rotary positions applied to q and k heads in one pass."""
    b, t, _ = qkv.shape
    qkv = qkv.view(b, t, h + 2 * kv, d)
    qk, v = qkv[:, :, : h + kv], qkv[:, :, h + kv:]
    if pos.rope is not None:
        qk = apply_rope(qk, *pos.rope)
    return qk[:, :, :h], qk[:, :, h:], v


def expand_kv(x: Tensor, n_heads: int) -> Tensor:
    """[B, KV, T, D] -> [B, H, T, D], each KV head serving H / KV query heads."""
    b, kv, t, d = x.shape
    if kv == n_heads:
        return x
    return x[:, :, None].expand(b, kv, n_heads // kv, t, d).reshape(b, n_heads, t, d)


class SelfAttention(nn.Module):
    """`mha`, `mqa` and `gqa`: one module with 1 <= KV heads <= heads; q, k, v in one matmul."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        width = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, width, bias=cfg.qkv_bias)
        self.out = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, pos: Positional) -> Tensor:
        b, t, _ = x.shape
        h, d = self.n_heads, self.head_dim
        q, k, v = split_qkv(self.qkv(x), h, self.n_kv, d, pos)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pos.bias)
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))


class LatentAttention(nn.Module):
    """`mla`: multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1).

    K and V come from one compressed latent c = RMSNorm(x W_down) of width `mla_rank`, up-
    projected per head (what a KV cache would hold is c plus the shared rotary key: 4.5 head
    widths per token at the defaults). RoPE cannot pass through the up-projection, so each
    head's query and key are split: a `nope` part from the latent path, and a decoupled rotary
    part, its key shared by every head and taken straight from x. Queries are not compressed
    (as DeepSeek-V2-Lite). Widths: nope + rope = head_dim per head for q and k, and v is
    head_dim wide, so the attention core costs what the baseline's does and flash applies (its
    kernel wants one head width for q, k and v; DeepSeek-V2 itself uses 128 + 64 for q/k).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.rope_dim, self.rank = cfg.mla_rope_dim, cfg.mla_rank
        self.nope_dim = self.head_dim - self.rope_dim
        h, d = self.n_heads, self.head_dim
        self.q = nn.Linear(cfg.d_model, h * d, bias=cfg.qkv_bias)
        self.kv_down = nn.Linear(cfg.d_model, self.rank + self.rope_dim, bias=False)
        self.kv_norm = nn.RMSNorm(self.rank, eps=cfg.norm_eps)
        self.kv_up = nn.Linear(self.rank, h * (self.nope_dim + d), bias=False)
        self.out = nn.Linear(h * d, cfg.d_model, bias=False)

    def forward(self, x: Tensor, pos: Positional) -> Tensor:
        b, t, _ = x.shape
        h, d, r, n = self.n_heads, self.head_dim, self.rope_dim, self.nope_dim
        q_nope, q_rope = self.q(x).view(b, t, h, d).split((n, r), dim=-1)
        latent, k_rope = self.kv_down(x).split((self.rank, r), dim=-1)
        # fp32 into the norm: its weight is fp32, and mixed dtypes miss the fused kernel.
        kv = self.kv_up(self.kv_norm(latent.float())).view(b, t, h, n + d)
        k_nope, v = kv.split((n, d), dim=-1)
        k_rope = k_rope.view(b, t, 1, r)
        if pos.rope_latent is not None:
            q_rope = apply_rope(q_rope, *pos.rope_latent)
            k_rope = apply_rope(k_rope, *pos.rope_latent)
        q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        k = torch.cat((k_nope, k_rope.expand(b, t, h, r)), dim=-1).transpose(1, 2)
        y = attend(q, k, v.transpose(1, 2), pos.bias)
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))


# --- feed-forward ---------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """The dense FFN: down(silu(gate x) * up x), gate and up in one matmul."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """`moe`: n_experts SwiGLU experts, each token routed to its top_k (Mixtral-style).

    Routing: softmax over the router logits (in fp32), keep the top_k, renormalise their
    weights to sum to 1. Dropless: every token reaches both of its experts whatever the load
    (no capacity factor, so no token is dropped and the loss of variants compares); tokens
    are sorted by expert and each expert runs one matmul over its own rows. The price is one
    host sync per MoE layer (the per-expert counts size the splits) and uneven matmuls.
    Load balancing (Switch Transformer, Fedus et al. 2021, eq. 4): aux = E x sum_e f_e P_e,
    f_e the share of the N x top_k routing slots that went to expert e, P_e the mean router
    probability of e; 1.0 when balanced (or uniform probabilities), up to E when collapsed.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.hidden = cfg.n_experts, cfg.top_k, cfg.moe_hidden
        self.router = nn.Linear(cfg.d_model, self.n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(self.n_experts, cfg.d_model, 2 * self.hidden))
        self.down = nn.Parameter(torch.empty(self.n_experts, self.hidden, cfg.d_model))
        self.last_counts: Tensor | None = None
        """Routing slots each expert got in the last forward (for load statistics)."""

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(router probabilities [N, E] fp32, top-k weights [N, k], top-k experts [N, k])."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            probs = F.linear(flat.float(), self.router.weight.float()).softmax(dim=-1)
        weight, expert = probs.topk(self.top_k, dim=-1)
        return probs, weight / weight.sum(dim=-1, keepdim=True), expert

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n, k, e = flat.shape[0], self.top_k, self.n_experts
        probs, weight, expert = self.route(flat)
        slots = expert.reshape(-1)
        order = torch.argsort(slots, stable=True)
        token = order // k
        counts = torch.bincount(slots, minlength=e)
        aux = e * (counts.float() / (n * k) * probs.mean(dim=0)).sum()
        outs = []
        for i, rows in enumerate(flat[token].split(counts.tolist())):  # the one host sync
            if rows.shape[0]:
                gate, up = (rows @ self.gate_up[i]).chunk(2, dim=-1)
                outs.append((F.silu(gate) * up) @ self.down[i])
        ys = torch.cat(outs)
        ys = ys * weight.reshape(-1)[order, None].to(ys.dtype)
        out = torch.zeros(n, shape[-1], dtype=ys.dtype, device=x.device).index_add_(0, token, ys)
        self.last_counts = counts.detach()
        return out.view(shape), aux
