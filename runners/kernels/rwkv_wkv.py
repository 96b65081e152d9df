"""RWKV-4's WKV recurrence for training on CUDA, forward and backward, in Triton.

transformers' `RwkvForCausalLM` runs its time mixing ("linear attention") through a CUDA
kernel fetched from the hub (`kernels-community/rwkv`); where that cannot be downloaded it
falls back to `rwkv_linear_attention_cpu`, a Python loop over time steps that launches a
dozen small kernels a step and keeps every step's intermediates for autograd (at the
Qwen2.5-0.5B shape, batch 8 x 2048, about 70 s a training step on an H100). The kernels
here compute the same function in two launches a layer (one forward, one backward) and keep
nothing for backward beyond the layer's own inputs.

The math, per batch row and channel, from a zero state (w = -exp(time_decay) < 0, u =
time_first, k_t and v_t the key and value at step t):

    a_t = sum_{i<t} exp((t-1-i) w + k_i) v_i        b_t = the same sum without v_i
    y_t = (a_t + exp(u + k_t) v_t) / (b_t + exp(u + k_t))
    a_{t+1} = exp(w) a_t + exp(k_t) v_t             b_{t+1} = exp(w) b_t + exp(k_t)

Keys of a few tens overflow float32 in that form, so the state is held scaled, as
transformers' loop holds it: (num, den, m) with a_t = num e^m and b_t = den e^m, and every
step rescales to the larger of the exponents it combines, so each exp() sees an argument
<= 0 and den stays in [1, t + 1]. The idea of the kernels is the RWKV-4 WKV CUDA kernel's
(BlinkDL/RWKV-LM, `wkv_cuda.cu`): one thread a (batch row, channel) walks the sequence
with the scaled state in registers. Here one Triton program takes a batch row and a block of
`BLOCK_C` channels, channels being the contiguous dimension of [batch, T, C], so every load
and store of a step is one coalesced row segment.

Backward (derived for this module; y_t's partials are 1/D_t for a_t and -y_t/D_t for b_t,
D_t = b_t + exp(u + k_t)):

  - time_first and time_decay: a forward sweep regenerates the scaled state and carries
    its derivative with respect to w (forward mode: d a_{t+1}/dw = exp(w) (a_t + d a_t/dw),
    held at the state's scale), giving per step gy_t (da_t/dw - y_t db_t/dw) / D_t and
    gy_t exp(u + k_t) (v_t - y_t) / D_t, summed over time per (batch row, channel) and
    then over batch rows in torch (a fixed order: deterministic). time_decay's gradient is
    w times w's (dw/d time_decay = -exp(time_decay) = w).
  - key and value: a reverse sweep runs the adjoint of the state, alpha_t = dL/da_t =
    gy_t / D_t + exp(w) alpha_{t+1} and beta_t = dL/db_t = -gy_t y_t / D_t + exp(w)
    beta_{t+1}, scaled like the forward state by its own running exponent; then
    g v_t = gy_t exp(u + k_t) / D_t + alpha_{t+1} exp(k_t) and g k_t = gy_t exp(u + k_t)
    (v_t - y_t) / D_t + exp(k_t) (alpha_{t+1} v_t + beta_{t+1}). Every exponent it takes is
    again <= 0 up to rounding, because the forward exponent m_s of a later step bounds
    k_t + (s - 1 - t) w.

The reverse sweep needs three numbers a step from the forward state: y_t, gy_t over D_t's
scaled value (in [1, t + 2]) and D_t's exponent. It cannot regenerate them backwards (running
the state recurrence in reverse divides by exp(w) and cancels), so the backward kernel's
forward sweep writes them, in float32, into the key and value gradient buffers and one
scratch [batch, T, C] tensor, and the reverse sweep reads each back and overwrites it in
place (the same program touches the same elements, with a barrier between the sweeps).
That memory lives only while one layer's backward runs; the forward pass saves only its
inputs. Precision: all arithmetic in float32 whatever the input dtype (autocast off), the
output cast to the key's dtype as transformers' loop returns it, key and value gradients
cast to their dtypes, time_decay and time_first gradients to theirs.

Only usable where Triton is available (CUDA builds of torch); `available()` says so, and the
kernels are defined on first use, so importing this module never imports Triton.
`use_wkv_kernel` routes a transformers RWKV model's attention modules through `wkv` for
training (no state, no cache); calls with a state or a cache, and calls on the CPU, keep
transformers' own forward.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import Tensor

from runners.kernels import triton_support

BLOCK_C = 32
"""Channels per program: one warp, one 128-byte row segment of float32 a load."""

NEG_INF = -1e38
"""The exponent of an empty state (transformers' loop starts from the same value; the kernels
spell it as a literal, Triton reading no module globals)."""


available = triton_support.available


def describe() -> str:
    """What `use_wkv_kernel` makes the models' recurrence run (for run metadata)."""
    return "triton WKV kernel (runners.kernels.rwkv_wkv)"


def _runs_kernel(t: Tensor) -> bool:
    """Whether `wkv` on tensors like `t` runs the Triton kernels."""
    return t.is_cuda and triton_support.installed()


# --- reference ------------------------------------------------------------------------------


def wkv_reference(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor
                  ) -> Tensor:
    """The WKV recurrence as a Python loop over time steps under autograd (the loop of
    transformers' `rwkv_linear_attention_cpu` from a zero state), computed in float64 when
    any input is float64 and in float32 otherwise; the output in the key's dtype.

    key, value [batch, T, C]; time_decay, time_first [C]."""
    dtype = torch.float64 if torch.float64 in (
        time_decay.dtype, time_first.dtype, key.dtype, value.dtype) else torch.float32
    w = -torch.exp(time_decay.to(dtype))
    u = time_first.to(dtype)
    k, v = key.to(dtype), value.to(dtype)
    num = torch.zeros(k.shape[0], k.shape[2], dtype=dtype, device=k.device)
    den = torch.zeros_like(num)
    m = torch.full_like(num, NEG_INF)
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        mo = torch.maximum(m, u + kt)
        e1, e2 = torch.exp(m - mo), torch.exp(u + kt - mo)
        out.append((e1 * num + e2 * vt) / (e1 * den + e2))
        ms = torch.maximum(m + w, kt)
        e1, e2 = torch.exp(m + w - ms), torch.exp(kt - ms)
        num, den, m = e1 * num + e2 * vt, e1 * den + e2, ms
    if not out:
        return torch.empty_like(key)
    return torch.stack(out, dim=1).to(key.dtype)


# --- Triton kernels -------------------------------------------------------------------------

@functools.cache
def _kernels() -> Any:
    """(forward, backward) Triton kernels, defined on first use (Triton is not imported on
    CPU builds)."""
    import triton
    import triton.language as tl

    @triton.jit
    def wkv_forward(w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, T, C, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live = c < C
        w = tl.load(w_ptr + c, mask=live, other=0.0)
        u = tl.load(u_ptr + c, mask=live, other=0.0)
        row = b.to(tl.int64) * T * C + c  # element (b, 0, c); step t adds t * C
        num = tl.zeros((BLOCK,), tl.float32)
        den = tl.zeros((BLOCK,), tl.float32)
        m = tl.full((BLOCK,), -1e38, tl.float32)
        for t in range(T):
            at = row + t * C
            k = tl.load(k_ptr + at, mask=live, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + at, mask=live, other=0.0).to(tl.float32)
            uk = u + k
            mo = tl.maximum(m, uk)
            e1 = tl.exp(m - mo)
            e2 = tl.exp(uk - mo)
            y = (e1 * num + e2 * v) / (e1 * den + e2)
            tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=live)
            mw = m + w
            ms = tl.maximum(mw, k)
            e1 = tl.exp(mw - ms)
            e2 = tl.exp(k - ms)
            num = e1 * num + e2 * v
            den = e1 * den + e2
            m = ms

    @triton.jit
    def wkv_backward(w_ptr, u_ptr, k_ptr, v_ptr, gy_ptr, gw_ptr, gu_ptr, gk_ptr, gv_ptr,
                     mo_ptr, T, C, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live = c < C
        w = tl.load(w_ptr + c, mask=live, other=0.0)
        u = tl.load(u_ptr + c, mask=live, other=0.0)
        row = b.to(tl.int64) * T * C + c

        # Forward sweep: the scaled state (num, den, m), its w-derivative (dnum, dden) at the
        # same scale, the time_decay / time_first sums; y_t, gy_t / den-scale D_t and D_t's
        # exponent parked in gk, gv and mo for the reverse sweep.
        num = tl.zeros((BLOCK,), tl.float32)
        den = tl.zeros((BLOCK,), tl.float32)
        dnum = tl.zeros((BLOCK,), tl.float32)
        dden = tl.zeros((BLOCK,), tl.float32)
        m = tl.full((BLOCK,), -1e38, tl.float32)
        gw = tl.zeros((BLOCK,), tl.float32)
        gu = tl.zeros((BLOCK,), tl.float32)
        for t in range(T):
            at = row + t * C
            k = tl.load(k_ptr + at, mask=live, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + at, mask=live, other=0.0).to(tl.float32)
            gy = tl.load(gy_ptr + at, mask=live, other=0.0).to(tl.float32)
            uk = u + k
            mo = tl.maximum(m, uk)
            e1 = tl.exp(m - mo)
            e2 = tl.exp(uk - mo)
            z = 1.0 / (e1 * den + e2)
            y = (e1 * num + e2 * v) * z
            gz = gy * z
            gw += gz * e1 * (dnum - y * dden)
            gu += gz * e2 * (v - y)
            tl.store(gk_ptr + at, y, mask=live)
            tl.store(gv_ptr + at, gz, mask=live)
            tl.store(mo_ptr + at, mo, mask=live)
            mw = m + w
            ms = tl.maximum(mw, k)
            e1 = tl.exp(mw - ms)
            e2 = tl.exp(k - ms)
            dnum = e1 * (num + dnum)
            dden = e1 * (den + dden)
            num = e1 * num + e2 * v
            den = e1 * den + e2
            m = ms
        tl.store(gw_ptr + b * C + c, gw, mask=live)
        tl.store(gu_ptr + b * C + c, gu, mask=live)
        # Each thread reads back what it stored itself in the layouts compiled today; the
        # barrier keeps that true whatever layout a change of block or warps brings.
        tl.debug_barrier()

        # Reverse sweep: (alpha_{t+1}, beta_{t+1}) = (ga, gb) e^o, the adjoint of the state
        # the step t update produced.
        ga = tl.zeros((BLOCK,), tl.float32)
        gb = tl.zeros((BLOCK,), tl.float32)
        o = tl.full((BLOCK,), -1e38, tl.float32)
        for i in range(T):
            at = row + (T - 1 - i) * C
            k = tl.load(k_ptr + at, mask=live, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + at, mask=live, other=0.0).to(tl.float32)
            y = tl.load(gk_ptr + at, mask=live, other=0.0)
            gz = tl.load(gv_ptr + at, mask=live, other=0.0)
            mo = tl.load(mo_ptr + at, mask=live, other=0.0)
            direct = gz * tl.exp(u + k - mo)  # gy_t exp(u + k_t) / D_t
            carried = tl.exp(k + o)  # exp(k_t) e^o
            tl.store(gk_ptr + at, direct * (v - y) + carried * (ga * v + gb), mask=live)
            tl.store(gv_ptr + at, direct + carried * ga, mask=live)
            ow = o + w
            on = tl.maximum(ow, -mo)
            e1 = tl.exp(ow - on)
            e2 = gz * tl.exp(-mo - on)  # gy_t / D_t at scale e^on
            ga = e1 * ga + e2
            gb = e1 * gb - e2 * y
            o = on

    return wkv_forward, wkv_backward


def _grid(batch: int, channels: int) -> tuple[int, int]:
    return batch, -(-channels // BLOCK_C)


def _warps() -> int:
    return max(1, BLOCK_C // 32)


class _WKV(torch.autograd.Function):
    """`wkv` on the Triton kernels (any device Triton runs on: CUDA, or the interpreter)."""

    @staticmethod
    def forward(ctx: Any, time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor
                ) -> Tensor:
        if key.dim() != 3 or value.shape != key.shape or \
                time_decay.shape != (key.shape[2],) or time_first.shape != time_decay.shape or \
                len({t.device for t in (time_decay, time_first, key, value)}) != 1:
            raise ValueError(
                f"WKV operands disagree: key {tuple(key.shape)}, value {tuple(value.shape)}, "
                f"time_decay {tuple(time_decay.shape)}, time_first {tuple(time_first.shape)} "
                "(want key and value [batch, T, C], time_decay and time_first [C], one device)")
        with torch.autocast(key.device.type, enabled=False):
            k, v = key.contiguous(), value.contiguous()
            w = -torch.exp(time_decay.detach().float()).contiguous()
            u = time_first.detach().float().contiguous()
            batch, steps, channels = k.shape
            y = torch.empty(k.shape, dtype=key.dtype, device=k.device)
            with triton_support.launching_on(k):
                _kernels()[0][_grid(batch, channels)](
                    w, u, k, v, y, steps, channels, BLOCK=BLOCK_C, num_warps=_warps())
        ctx.save_for_backward(time_decay, time_first, k, v)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        time_decay, time_first, k, v = ctx.saved_tensors
        with torch.autocast(gy.device.type, enabled=False):
            w = -torch.exp(time_decay.detach().float()).contiguous()
            u = time_first.detach().float().contiguous()
            batch, steps, channels = k.shape
            gk = torch.empty(k.shape, dtype=torch.float32, device=k.device)
            gv = torch.empty_like(gk)
            scratch = torch.empty_like(gk)
            gw = torch.empty(batch, channels, dtype=torch.float32, device=k.device)
            gu = torch.empty_like(gw)
            with triton_support.launching_on(k):
                _kernels()[1][_grid(batch, channels)](
                    w, u, k, v, gy.contiguous(), gw, gu, gk, gv, scratch, steps, channels,
                    BLOCK=BLOCK_C, num_warps=_warps())
            del scratch
            g_decay = (gw.sum(0) * w).to(time_decay.dtype)
            g_first = gu.sum(0).to(time_first.dtype)
        return g_decay, g_first, gk.to(k.dtype), gv.to(v.dtype)


def wkv(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """RWKV-4's WKV of key, value [batch, T, C] with time_decay, time_first [C] from a zero
    state (the math of transformers' `rwkv_linear_attention_cpu` with state=None), float32
    inside, the output [batch, T, C] in the key's dtype; differentiable in all four inputs.

    CUDA tensors with Triton installed run the Triton kernels; anything else runs
    `wkv_reference` (the same loop as transformers' fallback)."""
    if not _runs_kernel(key):
        return wkv_reference(time_decay, time_first, key, value)
    return _WKV.apply(time_decay, time_first, key, value)


# --- transformers' RwkvSelfAttention ---------------------------------------------------------


def _attention_forward(self: Any, hidden: Tensor, state: Any = None, use_cache: bool = False
                       ) -> tuple[Tensor, Any]:
    """A transformers RwkvSelfAttention's forward for training: transformers' time shift,
    mixing and projections (`extract_key_value`), the WKV on `wkv`'s kernels, transformers'
    receptance gate and output projection. Calls with a state, a cache or off CUDA go to
    transformers' own forward."""
    if state is not None or use_cache or not _runs_kernel(hidden):
        return self._hf_forward(hidden, state=state, use_cache=use_cache)
    receptance, key, value, _ = self.extract_key_value(hidden)
    rwkv = _WKV.apply(self.time_decay, self.time_first, key, value)
    return self.output(receptance * rwkv), None


def use_wkv_kernel(hf_model: Any) -> int:
    """Route every RwkvSelfAttention of `hf_model` through the Triton WKV kernel for calls
    without a state or cache; returns how many modules were patched now (those patched
    before are skipped). Call it only where `available()`."""
    n = 0
    for module in hf_model.modules():
        if type(module).__name__ == "RwkvSelfAttention" and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_attention_forward, module)
            n += 1
    return n
