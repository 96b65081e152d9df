"""One-kernel decode attention for the lean decoder (runners.engines.fused) on CUDA, in Triton.

A decode step of one layer needs, after the QKV projection: rotary embedding of the new
query and key, writing the new key and value into the static cache at the current
position, and attention of every query head over the cache prefix. Written with torch ops
that is four to six kernels a layer even after inductor's fusion (rotary + cache writes,
two batched matmuls around a softmax); each costs a few microseconds however little it
reads, which at batch 1 on a small model is most of a decode step. This kernel does all of
it in one launch: one program per (sequence, KV head) rotates the key, stores key and
value, rotates the group of query heads that share that KV head and streams the cache
prefix once for the whole group with an online softmax (the flash-decoding recurrence), so
grouped-query attention reads each cached key once, with no expanded copies.

The math is the reference's (`runners.engines.fused.LeanDecoder.step` on the torch path): the
rotate-half rotary embedding with the model's own cos/sin tables, scale `head_dim ** -0.5`,
softmax over positions `0..pos`. Precision: rotation and softmax in float32, the two
products on tensor cores in the cache's dtype with float32 accumulation (IEEE float32 for
float32 models, never TF32).

Only imported where Triton is available (CUDA builds of torch); `available()` says so.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from runners.kernels import triton_support

available = triton_support.available


def supports(head_dim: int, group: int) -> str | None:
    """Why the kernel cannot serve this shape (None when it can)."""
    if head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
        return f"head_dim {head_dim} is not a power of two in 16..256"
    if group > 64:
        return f"{group} query heads per KV head (the kernel holds at most 64)"
    return None


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, defined on first use (Triton is not imported on CPU builds)."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, out_ptr,
                         pos_ptr, q_sb, k_sb, v_sb, c_sb, c_sh, c_sl, o_sb, scale,
                         G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_L: tl.constexpr, IEEE: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        pos = tl.load(pos_ptr)
        d = tl.arange(0, D)
        half: tl.constexpr = D // 2
        partner = (d + half) % D
        sign = tl.where(d < half, -1.0, 1.0)
        cos = tl.load(cos_ptr + pos * D + d).to(tl.float32)
        sin = tl.load(sin_ptr + pos * D + d).to(tl.float32) * sign

        # the new token's key (rotated) and value, stored at `pos`
        k_row = k_ptr + b * k_sb + kvh * D
        k_new = tl.load(k_row + d).to(tl.float32) * cos + \
            tl.load(k_row + partner).to(tl.float32) * sin
        v_new = tl.load(v_ptr + b * v_sb + kvh * D + d)
        cache = b * c_sb + kvh * c_sh
        tl.store(kc_ptr + cache + pos * c_sl + d, k_new.to(kc_ptr.dtype.element_ty))
        tl.store(vc_ptr + cache + pos * c_sl + d, v_new)
        k_new = k_new.to(kc_ptr.dtype.element_ty).to(tl.float32)  # as the cache holds it

        # the group's queries, rotated and scaled: [BLOCK_G, D]
        g = tl.arange(0, BLOCK_G)
        live = g < G
        q_rows = q_ptr + b * q_sb + (kvh * G + g)[:, None] * D
        q = tl.load(q_rows + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        q_partner = tl.load(q_rows + partner[None, :], mask=live[:, None], other=0.0)
        q = (q * cos[None, :] + q_partner.to(tl.float32) * sin[None, :])
        # (float32 explicitly: a float argument may arrive as float64 through inductor)
        q = (q.to(kc_ptr.dtype.element_ty).to(tl.float32) * scale).to(tl.float32)

        # start the online softmax with the new token itself (not read back from the cache)
        m = tl.sum(q * k_new[None, :], axis=1)
        total = tl.full((BLOCK_G,), 1.0, tl.float32)
        acc = tl.zeros((BLOCK_G, D), tl.float32) + v_new.to(tl.float32)[None, :]
        q_dot = q.to(kc_ptr.dtype.element_ty)
        for start in range(0, pos, BLOCK_L):
            offs = start + tl.arange(0, BLOCK_L)
            seen = offs < pos
            at = cache + offs[:, None] * c_sl + d[None, :]
            keys = tl.load(kc_ptr + at, mask=seen[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q_dot, tl.trans(keys), input_precision="ieee")
            else:
                s = tl.dot(q_dot, tl.trans(keys))
            s = tl.where(seen[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            total = total * alpha + tl.sum(p, axis=1)
            values = tl.load(vc_ptr + at, mask=seen[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p.to(values.dtype), values, input_precision="ieee")
            else:
                pv = tl.dot(p.to(values.dtype), values)
            acc = acc * alpha[:, None] + pv
            m = m_new
        out = acc / total[:, None]
        o_rows = out_ptr + b * o_sb + (kvh * G + g)[:, None] * D + d[None, :]
        tl.store(o_rows, out.to(out_ptr.dtype.element_ty), mask=live[:, None])

    return decode_attention


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     pos: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """Rotate, cache and attend one decode token; returns `out` [batch, heads * head_dim].

    q [batch, heads * head_dim], k and v [batch, kv_heads * head_dim] (rows may be strided
    views into one fused QKV output, columns contiguous); cos and sin [max_len, head_dim];
    caches [batch, kv_heads, max_len, head_dim]; pos a one-element long tensor on the device.
    """
    batch, kv_heads, _, head_dim = k_cache.shape
    group = q.shape[-1] // (kv_heads * head_dim)
    block_g = max(16, 1 << (group - 1).bit_length())
    _kernel()[(batch, kv_heads)](
        q, k, v, cos, sin, k_cache, v_cache, out, pos,
        q.stride(0), k.stride(0), v.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), scale,
        G=group, D=head_dim, BLOCK_G=block_g, BLOCK_L=64,
        IEEE=k_cache.dtype == torch.float32)
    return out
