"""NSA (native sparse attention, Yuan et al. 2025): flash-linear-attention's Triton kernel on
CUDA, the torch reference elsewhere, the same math.

Per query t of every query head (heads grouped `group` to a K/V head, as GQA), with the
sequence cut into blocks of `block_size` tokens and scale = 1 / sqrt(head width):

- compressed: each block's keys and values mean-pooled into one token; t attends to the
  blocks it has fully seen (c < (t + 1) // block_size); no block seen yet gives 0.
- selected: each block c < t // block_size scores its compressed attention probability
  exp(q k_c scale - lse), summed over the heads of the group (one choice per K/V head), the
  first block and the query's own and previous blocks score 1 per head (always chosen), and
  the `block_count` best blocks are attended at full resolution (keys up to t).
- sliding window: causal attention over the last `window` tokens (t - window < j <= t);
  window 0 drops the branch.
- out = g_cmp o_cmp + g_slc o_slc + g_swa o_swa, the gates sigmoids of a linear map of x
  (the module in runners.models.decoder_nsa).

What this keeps from the paper and what it takes from the maintained kernel
(`fla.ops.nsa.parallel_nsa`, package fla-core 0.6.0, the `kernels` extra): the three branches,
learned gates, group-shared block choice with 1 initial + 2 local blocks forced (the paper's
section 3.3); compression is fla's mean pooling over non-overlapping blocks as wide as the
selection blocks (the paper learns an MLP over 32-token blocks at stride 16), and the three
branches share one K/V projection (the paper gives each its own). fla needs query heads per
K/V head a power of two and at least 16, `block_count` a power of two at most half the block,
and a head width at most 256: runners.params.pair_problem and DecoderConfig check the same.
The block choice is discrete: no gradient flows through it, in either path.

fla runs its window branch through the flash-attn package; where flash-attn is not installed
the window branch runs here, through SDPA with a band mask (`describe` says which).
Importing this module imports neither Triton nor fla.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

FLA_PACKAGE = "fla-core==0.6.0"
FLA_GROUP = 16
"""Query heads per K/V head that fla's kernel tiles (a power of two, at least 16)."""


class NSAShape(NamedTuple):
    """The sparsity of NSA: block width, blocks chosen per query, sliding window."""

    block_size: int
    block_count: int
    window: int


@functools.cache
def fla_installed() -> bool:
    """The fla package (fla-core) is importable (looked up once, not imported)."""
    return importlib.util.find_spec("fla") is not None


@functools.cache
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def runs_kernel(t: Tensor) -> bool:
    """Whether `nsa` on tensors like `t` runs fla's kernel."""
    return t.is_cuda and fla_installed()


def describe(cuda: bool) -> str:
    """Which implementation `nsa` runs on a CUDA (or other) device, for run metadata."""
    if not (cuda and fla_installed()):
        why = "not CUDA" if not cuda else f"{FLA_PACKAGE} not installed"
        return ("torch reference (runners.kernels.nsa.nsa_reference: dense masked SDPA, "
                f"{why})")
    window = "flash-attn" if flash_attn_installed() else \
        "SDPA band mask (flash-attn not installed)"
    return (f"flash-linear-attention parallel_nsa (fla-core, Triton): compressed + selected "
            f"branches; sliding window on {window}")


def nsa(q: Tensor, k: Tensor, v: Tensor, gates: Tensor, shape: NSAShape) -> Tensor:
    """NSA of q [B, T, HQ, D] over k, v [B, T, H, D] (HQ a multiple of H) with gates
    [B, T, HQ, 3] (compressed, selected, window; already in (0, 1)); out [B, T, HQ, D].
    CUDA tensors with fla installed run fla's kernel, anything else the reference."""
    if runs_kernel(q):
        return nsa_kernel(q, k, v, gates, shape)
    return nsa_reference(q, k, v, gates, shape)


# --- reference ------------------------------------------------------------------------------


def select_blocks(q: Tensor, k_cmp: Tensor, lse: Tensor, shape: NSAShape) -> Tensor:
    """Chosen blocks [B, H, T, C] (bool) of q [B, H, G, T, D] over the pooled keys k_cmp
    [B, H, C, D], lse [B, H, G, T] the compressed branch's log-sum-exp (no gradient)."""
    t_len, c_len = q.shape[3], k_cmp.shape[2]
    scale = q.shape[-1] ** -0.5
    t = torch.arange(t_len, device=q.device)[:, None]
    c = torch.arange(c_len, device=q.device)[None, :]
    own = t // shape.block_size
    forced = (c == 0) | (c == own) | (c == own - 1)  # [T, C]
    with torch.no_grad():
        s = torch.einsum("bhgtd,bhcd->bhgtc", q.float(), k_cmp.float()) * scale
        p = torch.exp(s - lse.float()[..., None]).masked_fill(~(c < own), 0.0)
        score = torch.where(forced, 1.0, p).sum(dim=2)  # [B, H, T, C]
        score = score.masked_fill(c > own, -1.0)  # not yet reached: never chosen
        top, idx = score.topk(min(shape.block_count, c_len), dim=-1)
        chosen = torch.zeros_like(score, dtype=torch.bool)
        chosen.scatter_(-1, idx, top >= 0)
    return chosen


def nsa_reference(q: Tensor, k: Tensor, v: Tensor, gates: Tensor, shape: NSAShape) -> Tensor:
    """`nsa` in torch ops: the three branches as masked dense attention (O(T^2) memory)."""
    b, t_len, hq, d = q.shape
    h = k.shape[2]
    g = hq // h
    bs = shape.block_size
    pad = -t_len % bs  # right padding: causal, so no earlier token sees it
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    t_all = t_len + pad
    c_len = t_all // bs
    qh = q.permute(0, 2, 1, 3).reshape(b, h, g, t_all, d)
    kh, vh = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)  # [B, H, T, D]
    k_cmp = kh.reshape(b, h, c_len, bs, d).mean(dim=3)
    v_cmp = vh.reshape(b, h, c_len, bs, d).mean(dim=3)
    t = torch.arange(t_all, device=q.device)[:, None]
    c = torch.arange(c_len, device=q.device)[None, :]
    # compressed branch (fp32 softmax); queries that have seen no whole block get 0
    s = torch.einsum("bhgtd,bhcd->bhgtc", qh, k_cmp).float() * d ** -0.5
    s = s.masked_fill(~((c + 1) * bs - 1 <= t), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0).to(v_cmp.dtype)
    o_cmp = torch.einsum("bhgtc,bhcd->bhgtd", p, v_cmp)
    # selected branch: keys of chosen blocks, causal
    chosen = select_blocks(qh, k_cmp, lse, shape)  # [B, H, T, C]
    j = torch.arange(t_all, device=q.device)
    causal = j[None, :] <= t
    sel_mask = chosen.repeat_interleave(bs, dim=-1) & causal  # [B, H, T, T]
    o_slc = _masked(qh, kh, vh, sel_mask)
    o = o_cmp * _gate(gates, 0, b, h, g, t_all, t_len) \
        + o_slc * _gate(gates, 1, b, h, g, t_all, t_len)
    if shape.window > 0:
        band = causal & (j[None, :] > t - shape.window)
        o = o + _masked(qh, kh, vh, band) * _gate(gates, 2, b, h, g, t_all, t_len)
    return o.reshape(b, hq, t_all, d).permute(0, 2, 1, 3)[:, :t_len].to(q.dtype)


def _masked(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of q [B, H, G, T, D] over k, v [B, H, T, D] under a boolean mask [B, H, T, T]
    or [T, T] (True: attend; every row keeps its diagonal), one mask for a K/V head's group."""
    b, h, g, t_len, d = q.shape
    k, v = (x.reshape(b * h, 1, t_len, d).expand(b * h, g, t_len, d) for x in (k, v))
    if mask.dim() == 4:
        mask = mask.reshape(b * h, 1, t_len, t_len)
    y = F.scaled_dot_product_attention(q.reshape(b * h, g, t_len, d), k, v, attn_mask=mask)
    return y.view(b, h, g, t_len, d)


def _gate(gates: Tensor, i: int, b: int, h: int, g: int, t_all: int, t_len: int) -> Tensor:
    """Gate `i` of [B, T, HQ, 3] as [B, H, G, T_all, 1] (zero on the padding)."""
    x = gates[..., i].permute(0, 2, 1).reshape(b, h, g, t_len)
    return F.pad(x, (0, t_all - t_len))[..., None]


# --- fla's kernel ---------------------------------------------------------------------------


@torch.compiler.disable
def nsa_kernel(q: Tensor, k: Tensor, v: Tensor, gates: Tensor, shape: NSAShape) -> Tensor:
    """`nsa` on fla's `parallel_nsa` (CUDA; kept out of torch.compile's graphs: its Triton
    autotuning runs eagerly). The window branch runs in fla where flash-attn is installed,
    else here through SDPA with a band mask over K/V expanded to every query head."""
    from fla.ops.nsa import parallel_nsa

    q, k, v = (x.contiguous() for x in (q, k, v))
    g_cmp, g_slc, g_swa = (gates[..., i].contiguous() for i in range(3))
    in_fla = shape.window > 0 and flash_attn_installed()
    o = parallel_nsa(q, k, v, g_cmp=g_cmp, g_slc=g_slc, g_swa=g_swa if in_fla else None,
                     block_counts=shape.block_count, block_size=shape.block_size,
                     window_size=shape.window if in_fla else 0)
    if shape.window > 0 and not in_fla:
        o = o + window_attention(q, k, v, shape.window) * g_swa[..., None]
    return o


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Causal attention of q [B, T, HQ, D] over the last `window` tokens of k, v [B, T, H, D]
    through SDPA (a band mask; K/V expanded to the query heads); out [B, T, HQ, D]."""
    t_len, hq, h = q.shape[1], q.shape[2], k.shape[2]
    j = torch.arange(t_len, device=q.device)
    band = (j[None, :] <= j[:, None]) & (j[None, :] > j[:, None] - window)
    k, v = (x.repeat_interleave(hq // h, dim=2).transpose(1, 2) for x in (k, v))
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=band)
    return y.transpose(1, 2)
