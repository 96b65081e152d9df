"""RWKV-4's WKV recurrence for training: flash-linear-attention's fused kernel on CUDA, the
reference loop elsewhere.

transformers' `RwkvForCausalLM` runs its time mixing ("linear attention") through a CUDA
kernel fetched from the hub (`kernels-community/rwkv`); where that cannot be downloaded it
falls back to `rwkv_linear_attention_cpu`, a Python loop over time steps that launches a
dozen small kernels a step and keeps every step's intermediates for autograd (at the
Qwen2.5-0.5B shape, batch 8 x 2048, about 70 s a training step on an H100). On CUDA,
`use_wkv_kernel` routes the models' training forward through the maintained Triton kernel of
flash-linear-attention (`fla.ops.rwkv4.fused_recurrent_rwkv4`, package fla-core, the
optional `kernels` extra): one launch a layer forward and one backward, the scaled state
(num, den, exponent) of every step kept for backward in float32.

The math, per batch row and channel, from a zero state (w = -exp(time_decay) < 0, u =
time_first, k_t and v_t the key and value at step t):

    a_t = sum_{i<t} exp((t-1-i) w + k_i) v_i        b_t = the same sum without v_i
    y_t = (a_t + exp(u + k_t) v_t) / (b_t + exp(u + k_t))
    a_{t+1} = exp(w) a_t + exp(k_t) v_t             b_{t+1} = exp(w) b_t + exp(k_t)

held scaled, (num, den, m) with a_t = num e^m, so that no exp() overflows for keys of a few
tens. fla's kernel computes exactly this from the initial state (0, 0, -1e38) that
`wkv_reference` starts from; tests/gpu/test_rwkv_gpu.py checks it against the float64 loop.
Precision: float32 inside whatever the input dtype (the key and value go in as float32, as
transformers' loop takes them), the output cast to the key's dtype, gradients to the inputs'.

Importing this module imports neither Triton nor fla: `available()` looks them up, and the
kernel is imported on first use. Calls with a state or a cache, and calls off CUDA, keep
transformers' own forward.
"""

from __future__ import annotations

import functools
import importlib.util
import types
from typing import Any

import torch
from torch import Tensor

NEG_INF = -1e38
"""The exponent of an empty state (transformers' loop and fla's kernel start from it)."""
FLA_PACKAGE = "fla-core==0.6.0"


@functools.cache
def fla_installed() -> bool:
    """The fla package (fla-core) is importable (looked up once, not imported)."""
    return importlib.util.find_spec("fla") is not None


def available() -> bool:
    """fla is installed and torch sees a CUDA device."""
    return fla_installed() and torch.cuda.is_available()


def describe() -> str:
    """What `use_wkv_kernel` makes the models' recurrence run (for run metadata)."""
    return "flash-linear-attention fused_recurrent_rwkv4 (fla-core, Triton)"


def _runs_kernel(t: Tensor) -> bool:
    """Whether `wkv` on tensors like `t` runs fla's kernel."""
    return t.is_cuda and fla_installed()


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


# --- fla's kernel ---------------------------------------------------------------------------


def _check_shapes(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor) -> None:
    """ValueError unless the operands agree (the kernel indexes them unchecked)."""
    if key.dim() != 3 or value.shape != key.shape or time_decay.shape != (key.shape[2],) or \
            time_first.shape != (key.shape[2],):
        raise ValueError(
            f"WKV operands disagree: time_decay {tuple(time_decay.shape)}, time_first "
            f"{tuple(time_first.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)} "
            "(want key and value [batch, T, C], time_decay and time_first [C])")


def kernel_wkv(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """`wkv_reference`'s function on fla's fused kernel (CUDA): float32 inside, autocast
    off, the output in the key's dtype; differentiable in all four inputs."""
    _check_shapes(time_decay, time_first, key, value)
    from fla.ops.rwkv4 import fused_recurrent_rwkv4

    batch, _, channels = key.shape
    with torch.autocast(key.device.type, enabled=False):
        state = torch.zeros(batch, 3, 1, channels, dtype=torch.float32, device=key.device)
        state[:, 2] = NEG_INF
        y, _ = fused_recurrent_rwkv4(time_decay.float(), time_first.float(), key.float(),
                                     value.float(), state)
    return y.to(key.dtype)


def wkv(time_decay: Tensor, time_first: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """RWKV-4's WKV of key, value [batch, T, C] with time_decay, time_first [C] from a zero
    state (the math of transformers' `rwkv_linear_attention_cpu` with state=None), float32
    inside, the output [batch, T, C] in the key's dtype; differentiable in all four inputs.

    CUDA tensors with fla installed run fla's kernel (`kernel_wkv`); anything else runs
    `wkv_reference` (the same loop as transformers' fallback)."""
    if not _runs_kernel(key):
        return wkv_reference(time_decay, time_first, key, value)
    return kernel_wkv(time_decay, time_first, key, value)


# --- transformers' RwkvSelfAttention ---------------------------------------------------------


def _attention_forward(self: Any, hidden: Tensor, state: Any = None, use_cache: bool = False
                       ) -> tuple[Tensor, Any]:
    """A transformers RwkvSelfAttention's forward for training: transformers' time shift,
    mixing and projections (`extract_key_value`), the WKV on fla's kernel, transformers'
    receptance gate and output projection. Calls with a state, a cache or off CUDA go to
    transformers' own forward."""
    if state is not None or use_cache or not _runs_kernel(hidden):
        return self._hf_forward(hidden, state=state, use_cache=use_cache)
    receptance, key, value, _ = self.extract_key_value(hidden)
    rwkv = kernel_wkv(self.time_decay, self.time_first, key, value)
    return self.output(receptance * rwkv), None


def use_wkv_kernel(hf_model: Any) -> int:
    """Route every RwkvSelfAttention of `hf_model` through fla's WKV kernel for calls without
    a state or cache; returns how many modules were patched now (those patched before are
    skipped). Call it only where `available()`."""
    n = 0
    for module in hf_model.modules():
        if type(module).__name__ == "RwkvSelfAttention" and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_attention_forward, module)
            n += 1
    return n
