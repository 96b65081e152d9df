"""Attention-free and other baselines from transformers' own classes, random init, scaled to a
size preset: Mamba (MambaForCausalLM), RWKV (RwkvForCausalLM), Pythia (GPTNeoXForCausalLM).

Matching (equal parameters): each keeps the preset's width, depth, vocabulary and embedding
tying, and its one free width (Mamba's inner width, RWKV's and Pythia's FFN width) is solved
so that its total parameters equal the baseline decoder's (GQA + RoPE + dense), rounded to a
multiple of 64. Parameter counts are linear in that width, so two meta-device builds give the
exact solution without allocating anything.

Kernels: with the `mamba_ssm` and `causal_conv1d` packages Mamba trains through their fused
kernels (transformers' own fast path). Without them, transformers' reference scan discretises
A, B and B x u for the whole sequence as [batch, inner, T, state] fp32 tensors per layer and
loops over time steps under autograd, which keeps all of them for backward (at the 0.5B shape
and batch 8 x 2048: 5 GiB each, per layer, and a backward that adds a full-size gradient per
time step): it neither fits 80 GB nor finishes a step in minutes. So without the fused
kernels each mixer's training forward runs `selective_scan` below instead: the same
recurrence in fp32 (as mamba_ssm's kernel computes it), discretised chunk by chunk of time,
keeping only each chunk's entry state for backward, which recomputes the chunk. The
projections, convolution, gating and parameters are transformers' own, untouched, and
activation checkpointing of the Mamba blocks (transformers' `gradient_checkpointing_enable`)
bounds what the rest of each block keeps. `kernels` and `scan` in the result say which path
ran.
RWKV without its hub kernel runs transformers' Python loop over time steps.

`recurrence` picks how those two recurrences run: `torch` (the chunked torch scan above for
Mamba, transformers' loop for RWKV; the CPU path), `triton`, Triton kernels on CUDA,
forward and backward in one launch each per layer: for RWKV flash-linear-attention's
maintained RWKV-4 kernel (`runners.kernels.rwkv_wkv`, package fla-core), for Mamba our own
scan (`runners.kernels.scan_triton`), since no maintained kernel that installs without a CUDA
toolchain fits Mamba-1's recurrence (docs/benchmarks.md says why), or `auto` (the default:
triton where it runs, else torch).
"""

from __future__ import annotations

import importlib.util
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.engines.xent import LossOptions
from runners.errors import BadInput
from runners.kernels import rwkv_wkv, scan_triton
from runners.models.cards import ModelCard
from runners.models.decoder import LossOut, ParamCounts, lm_loss

KINDS = ("mamba", "rwkv", "pythia")
WIDTH_MULTIPLE = 64
PYTHIA_ROTARY_SHARE = 0.25
"""Pythia rotates a quarter of each head's features (GPT-NeoX's rotary_pct)."""
PYTHIA_ROPE_THETA = 10000.0


def _config(kind: str, card: ModelCard, seq_len: int, width: int) -> Any:
    """The transformers config of `kind` at the card's shape with free width `width`."""
    import transformers

    common = dict(vocab_size=card.vocab_size, hidden_size=card.hidden_size,
                  num_hidden_layers=card.num_layers, tie_word_embeddings=card.tie_embeddings,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None, use_cache=False)
    if kind == "mamba":
        cfg = transformers.MambaConfig(**common, state_size=16, expand=2, conv_kernel=4)
        cfg.intermediate_size = width  # expand x hidden, at any width
        return cfg
    if kind == "rwkv":
        return transformers.RwkvConfig(**common, context_length=seq_len,
                                       attention_hidden_size=card.hidden_size,
                                       intermediate_size=width, rescale_every=0)
    if kind == "pythia":
        return transformers.GPTNeoXConfig(
            **common, num_attention_heads=card.num_heads, intermediate_size=width,
            max_position_embeddings=seq_len, hidden_act="gelu", use_parallel_residual=True,
            attention_dropout=0.0, hidden_dropout=0.0,
            rope_parameters={"rope_type": "default", "rope_theta": PYTHIA_ROPE_THETA,
                             "partial_rotary_factor": PYTHIA_ROTARY_SHARE})
    raise ValueError(f"unknown baseline {kind!r} (choose from {', '.join(KINDS)})")


def _model_class(kind: str) -> Any:
    import transformers

    return {"mamba": transformers.MambaForCausalLM, "rwkv": transformers.RwkvForCausalLM,
            "pythia": transformers.GPTNeoXForCausalLM}[kind]


def _instantiate(kind: str, config: Any) -> Any:
    extra = {"attn_implementation": "sdpa"} if kind == "pythia" else {}
    return _model_class(kind)._from_config(config, dtype=torch.float32, **extra)


def count_params(kind: str, card: ModelCard, seq_len: int, width: int) -> int:
    """Total parameters of `kind` at `width`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = _instantiate(kind, _config(kind, card, seq_len, width))
    return sum(p.numel() for p in model.parameters())


def matched_width(kind: str, card: ModelCard, seq_len: int, target_params: int) -> int:
    """The free width (a multiple of 64) whose total parameters come closest to the target."""
    w1, w2 = 8 * WIDTH_MULTIPLE, 16 * WIDTH_MULTIPLE
    p1, p2 = count_params(kind, card, seq_len, w1), count_params(kind, card, seq_len, w2)
    per_unit = (p2 - p1) / (w2 - w1)
    exact = w1 + (target_params - p1) / per_unit
    return max(WIDTH_MULTIPLE, WIDTH_MULTIPLE * round(exact / WIDTH_MULTIPLE))


def mamba_fused_available() -> bool:
    """Whether the mamba_ssm and causal_conv1d packages (transformers' fast path) are here."""
    return bool(importlib.util.find_spec("mamba_ssm") and importlib.util.find_spec(
        "causal_conv1d"))


SCAN_PATH = ("runners.models.baselines.selective_scan: chunked fp32 recurrence, chunk states kept, "
             "chunks recomputed in backward (mamba_ssm/causal_conv1d not installed)")
SCAN_PATH_TRITON = ("runners.kernels.scan_triton: triton selective scan, fp32 recurrence in "
                    "registers, chunk states kept, chunks recomputed in backward "
                    "(mamba_ssm/causal_conv1d not installed)")
RECURRENCES = ("auto", "torch", "triton")
"""Values of the pretraining parameter `recurrence` (see the module docstring)."""


def resolve_recurrence(recurrence: str, device: str | torch.device, kind: str = "mamba") -> str:
    """`auto` -> `triton` where its kernel runs (a CUDA device with Triton, and fla-core for
    RWKV), else `torch`; any other value unchanged. On an H100 at the 0.5B shape the torch
    paths take 4.82 s (Mamba) and about 70 s (RWKV's loop) a step against 1.0 s and 0.33 s on
    the kernels (docs/benchmarks.md runs K1, K2), so `auto` never leaves a GPU on them."""
    if recurrence != "auto":
        return recurrence
    if torch.device(device).type == "cuda" and scan_triton.available() and (
            kind != "rwkv" or rwkv_wkv.fla_installed()):
        return "triton"
    return "torch"


def check_recurrence(recurrence: str, device: str | torch.device, kind: str = "mamba"
                     ) -> None:
    """BadInput unless `recurrence` is known and, for `triton`, can run on `device` (RWKV's
    also needs fla-core)."""
    if recurrence not in RECURRENCES:
        raise BadInput(f"unknown recurrence {recurrence!r} (choose from "
                       f"{', '.join(RECURRENCES)})")
    recurrence = resolve_recurrence(recurrence, device, kind)
    if recurrence == "triton" and not (torch.device(device).type == "cuda"
                                        and scan_triton.available()):
        raise BadInput("recurrence=triton needs a CUDA device and the triton package "
                       "(use recurrence=torch)")
    if recurrence == "triton" and kind == "rwkv" and not rwkv_wkv.fla_installed():
        raise BadInput(f"recurrence=triton for rwkv runs flash-linear-attention's kernel: "
                       f"pip install {rwkv_wkv.FLA_PACKAGE} (the `kernels` extra), or use "
                       "recurrence=torch")


def kernels(kind: str, recurrence: str = "torch") -> str:
    """Which implementation of the recurrence runs (what the timings measure)."""
    if kind == "mamba":
        if mamba_fused_available():
            return "mamba_ssm fused kernels"
        return SCAN_PATH_TRITON if recurrence == "triton" else SCAN_PATH
    if kind == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        if recurrence == "triton":  # routed around the hub kernel, loaded or not
            return rwkv_wkv.describe()
        if modeling_rwkv.rwkv_cuda_kernel is not None:
            return "RWKV CUDA kernel"
        return "transformers Python loop over time steps (RWKV CUDA kernel not loaded)"
    return "sdpa attention"


# --- Mamba's selective scan without mamba_ssm -------------------------------------------------

SCAN_CHUNK_BYTES = 256 << 20
"""Budget of one [chunk, batch, inner, state] fp32 buffer of the scan."""


def _scan_chunk_len(batch: int, inner: int, state: int, seq_len: int) -> int:
    per_step = 4 * batch * inner * state
    return max(1, min(seq_len, SCAN_CHUNK_BYTES // max(1, per_step)))


def _discretize(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor) -> tuple[Tensor, Tensor]:
    """(exp(delta A), delta B u) of one chunk, time-major [L, batch, inner, state] fp32, from
    u, delta [batch, inner, L], A [inner, state], Bm [batch, L, state]."""
    dt = delta.permute(2, 0, 1)[..., None]  # [L, b, d, 1]
    dA = torch.exp(dt * A)
    dBu = (dt * u.permute(2, 0, 1)[..., None]) * Bm.transpose(0, 1)[:, :, None, :]
    return dA, dBu


def _run_states(dA: Tensor, dBu: Tensor, h0: Tensor) -> Tensor:
    """The states h_t = dA_t h_{t-1} + dBu_t of one chunk, written over dBu (returned)."""
    prev = h0
    for t in range(dA.shape[0]):
        prev = dBu[t].addcmul_(dA[t], prev)
    return dBu


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, h_0 = 0, in fp32.

    u, delta [batch, inner, T]; A [inner, state]; Bm, Cm [batch, T, state] -> y [batch, inner,
    T] fp32. Forward keeps the state entering each chunk; backward recomputes a chunk's states
    from it and runs the adjoint recurrence g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}
    backwards, so memory is a few chunk buffers however long the sequence."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor
                ) -> Tensor:
        with torch.autocast(u.device.type, enabled=False):  # fp32 throughout, as mamba_ssm
            return _SelectiveScan._forward(ctx, u, delta, A, Bm, Cm)

    @staticmethod
    def _forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor
                 ) -> Tensor:
        b, d, T = u.shape
        n = A.shape[1]
        length = _scan_chunk_len(b, d, n, T)
        u32, dt32, A32 = u.float(), delta.float(), A.float()
        B32, C32 = Bm.float(), Cm.float()
        y = torch.empty(b, d, T, dtype=torch.float32, device=u.device)
        h = torch.zeros(b, d, n, dtype=torch.float32, device=u.device)
        starts = []
        for t0 in range(0, T, length):
            t1 = min(T, t0 + length)
            starts.append(h)
            dA, dBu = _discretize(u32[:, :, t0:t1], dt32[:, :, t0:t1], A32, B32[:, t0:t1])
            H = _run_states(dA, dBu, h)
            # y[b, d, t] = sum_n H[t, b, d, n] C[b, t, n]: one batched mat-vec.
            y[:, :, t0:t1] = (H @ C32[:, t0:t1].transpose(0, 1)[..., None])[..., 0] \
                .permute(1, 2, 0)
            h = H[-1].clone()
        ctx.save_for_backward(u, delta, A, Bm, Cm, torch.stack(starts))
        ctx.length = length
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        with torch.autocast(gy.device.type, enabled=False):
            return _SelectiveScan._backward(ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, Bm, Cm, starts = ctx.saved_tensors
        length = ctx.length
        b, d, T = u.shape
        u32, dt32, A32 = u.float(), delta.float(), A.float()
        B32, C32 = Bm.float(), Cm.float()
        gy = gy.float()
        gu = torch.empty(b, d, T, dtype=torch.float32, device=u.device)
        gdelta = torch.empty_like(gu)
        gA = torch.zeros_like(A32)
        gB = torch.empty_like(B32)
        gC = torch.empty_like(C32)
        carry = torch.zeros_like(starts[0])  # dL/dh_{t1-1} from the chunks after this one
        chunks = list(range(0, T, length))
        for i in reversed(range(len(chunks))):
            t0 = chunks[i]
            t1 = min(T, t0 + length)
            uc, dtc = u32[:, :, t0:t1], dt32[:, :, t0:t1]
            Bc = B32[:, t0:t1].transpose(0, 1)  # [L, b, n]
            Cc = C32[:, t0:t1].transpose(0, 1)
            gyc = gy[:, :, t0:t1].permute(2, 0, 1)  # [L, b, d]
            dA, dBu = _discretize(uc, dtc, A32, B32[:, t0:t1])
            H = _run_states(dA, dBu, starts[i])
            gC[:, t0:t1] = (gyc[:, :, None, :] @ H)[:, :, 0].transpose(0, 1)
            # G_t = dL/dh_t: C_t gy_t from y_t, plus dA_{t+1} G_{t+1} from h_{t+1}.
            G = gyc[..., None] * Cc[:, :, None, :]
            G[-1] += carry
            for t in range(G.shape[0] - 2, -1, -1):
                G[t].addcmul_(dA[t + 1], G[t + 1])
            carry = dA[0] * G[0]
            # h_{t-1} of every step (the chunk's entry state first) times G_t: dL/d dA_t,
            # then through dA = exp(delta A): dL/d(delta A) = that x dA.
            gdA = torch.empty_like(G)
            gdA[0] = G[0] * starts[i]
            torch.mul(G[1:], H[:-1], out=gdA[1:])
            gdA.mul_(dA)
            del dA, H
            dtc_t = dtc.permute(2, 0, 1)  # [L, b, d]
            gA += torch.einsum("lbdn,lbd->dn", gdA, dtc_t)
            g_delta = (gdA * A32).sum(-1)  # [L, b, d]
            del gdA
            # dBu_t = (delta_t u_t) B_t: G_t is dL/d dBu_t.
            g_dtu = (G @ Bc[..., None])[..., 0]  # [L, b, d]
            dtu = dtc_t * uc.permute(2, 0, 1)
            gB[:, t0:t1] = (dtu[:, :, None, :] @ G)[:, :, 0].transpose(0, 1)
            del G
            g_delta += g_dtu * uc.permute(2, 0, 1)
            gdelta[:, :, t0:t1] = g_delta.permute(1, 2, 0)
            gu[:, :, t0:t1] = (g_dtu * dtc_t).permute(1, 2, 0)
        return (gu.to(u.dtype), gdelta.to(delta.dtype), gA.to(A.dtype), gB.to(Bm.dtype),
                gC.to(Cm.dtype))


def scan_reference(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """The textbook selective scan in float64, one step at a time under autograd: what the
    chunked scan and the Triton kernels are tested against (small shapes only)."""
    u, delta, A, Bm, Cm = (t.double() for t in (u, delta, A, Bm, Cm))
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64, device=u.device)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + \
            delta[:, :, t, None] * Bm[:, None, t] * u[:, :, t, None]
        ys.append((h * Cm[:, None, t]).sum(-1))
    return torch.stack(ys, -1)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """Mamba's selective scan (no D skip, no gate) in torch ops: see `_SelectiveScan`.
    `runners.kernels.scan_triton.selective_scan_triton` computes the same on CUDA."""
    return _SelectiveScan.apply(u, delta, A, Bm, Cm)


def _mixer_forward(self: Any, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """A transformers MambaMixer's forward for training without a cache: transformers'
    projections, causal convolution, gating and D skip around `selective_scan` (delta's bias
    and softplus in fp32, as mamba_ssm applies them). Calls with a cache or a padding mask
    go to transformers' own forward."""
    if any(a is not None for a in args) or any(v is not None for v in kwargs.values()):
        return self._hf_forward(hidden_states, *args, **kwargs)
    seq_len = hidden_states.shape[1]
    projected = self.in_proj(hidden_states).transpose(1, 2)  # [b, 2 inner, T]
    x, gate = projected.chunk(2, dim=1)
    x = self.act(self.conv1d(x)[..., :seq_len])  # [b, inner, T]
    params = self.x_proj(x.transpose(1, 2))
    time_step, Bm, Cm = torch.split(
        params, [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = F.linear(time_step, self.dt_proj.weight).float()
    if self.dt_proj.bias is not None:
        dt = dt + self.dt_proj.bias.float()
    delta = F.softplus(dt).transpose(1, 2)  # [b, inner, T] fp32
    A = -torch.exp(self.A_log.float())
    y = self._scan(x, delta, A, Bm, Cm)
    y = (y + x.float() * self.D.float()[None, :, None]) * self.act(gate.float())
    return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))


def use_selective_scan(hf_model: Any, recurrence: str = "torch") -> int:
    """Route every MambaMixer of `hf_model` through `_mixer_forward` on the scan of
    `recurrence` (`torch`: `selective_scan`; `triton`: `runners.kernels.scan_triton`); returns how
    many mixers were routed now (those routed before keep their scan)."""
    scan = scan_triton.selective_scan_triton if recurrence == "triton" else selective_scan
    n = 0
    for module in hf_model.modules():
        if type(module).__name__ == "MambaMixer" and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module._scan = scan
            module.forward = types.MethodType(_mixer_forward, module)
            n += 1
    return n


class LanguageModel(nn.Module):
    """A transformers causal LM trained through the same loss as the decoder: its base model's
    final hidden states through the chunked `lm_loss` with its output embedding."""

    def __init__(self, kind: str, hf_model: Any, width: int, scan: str | None = None,
                 recurrence: str = "torch") -> None:
        super().__init__()
        self.kind = kind
        self.hf = hf_model
        self.width = width
        self.scan = scan
        """Mamba and RWKV: which recurrence their layers run (None: Pythia)."""
        self.recurrence = recurrence
        self.checkpointing = False
        self.loss_options = LossOptions()

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of every transformers block (non-reentrant)."""
        hf = self.hf
        if on:
            kwargs = {"use_reentrant": False}
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.2x
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif self.checkpointing:
            getattr(hf, "activation_checkpointing_disable", hf.gradient_checkpointing_disable)()
        self.checkpointing = on

    def forward_loss(self, inputs: Tensor, targets: Tensor, *,
                     chunk_rows: int | None = None) -> LossOut:
        h = self.hf.base_model(input_ids=inputs, use_cache=False).last_hidden_state
        ce = lm_loss(h, self.hf.get_output_embeddings().weight, targets, chunk_rows=chunk_rows,
                     options=self.loss_options)
        return LossOut(ce, ce, None)

    def param_counts(self) -> ParamCounts:
        total = sum(p.numel() for p in self.parameters())
        embed = self.hf.get_input_embeddings().weight
        tied = embed is self.hf.get_output_embeddings().weight
        return ParamCounts(total=total, active=total, flop=total - (0 if tied else embed.numel()))

    def attention_shape(self) -> tuple[int, int]:
        """(layers, attention width) for the 12 L d T term; (0, 0) for attention-free models,
        whose recurrences (O(width x state) per token) are left out of the FLOP count."""
        cfg = self.hf.config
        if self.kind == "pythia":
            return cfg.num_hidden_layers, cfg.hidden_size
        return 0, 0

    def describe(self) -> dict[str, Any]:
        out = {"class": type(self.hf).__name__, "width_name": "intermediate_size",
               "width": self.width, "kernels": kernels(self.kind, self.recurrence),
               "activation_checkpointing": self.checkpointing}
        if self.scan is not None:
            out["scan"] = self.scan
            out["recurrence"] = self.recurrence
        return out


def build(kind: str, card: ModelCard, seq_len: int, device: str, seed: int,
          target_params: int, recurrence: str = "auto") -> LanguageModel:
    """`kind` at the card's shape, width matched to `target_params`, random init from `seed`,
    fp32 parameters on `device`, in training mode; Mamba's mixers on the selective scan and
    RWKV's attention on the WKV of `recurrence` where their fused kernels are absent.
    BadInput if `recurrence` cannot run on `device` (Mamba and RWKV only)."""
    if kind in ("mamba", "rwkv"):
        check_recurrence(recurrence, device, kind)
        recurrence = resolve_recurrence(recurrence, device, kind)
    width = matched_width(kind, card, seq_len, target_params)
    config = _config(kind, card, seq_len, width)
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = _instantiate(kind, config)
    hf_model.train()
    scan = None
    if kind == "mamba":
        if mamba_fused_available():
            scan = "mamba_ssm selective_scan (fused)"
        else:
            path = "triton selective scan (runners.kernels.scan_triton)" if recurrence == "triton" \
                else "chunked selective_scan (runners.models.baselines)"
            scan = f"{path}, {use_selective_scan(hf_model, recurrence)} mixers"
    elif kind == "rwkv":
        scan = "transformers' rwkv_linear_attention"
        if recurrence == "triton":
            scan = f"{rwkv_wkv.describe()}, {rwkv_wkv.use_wkv_kernel(hf_model)} layers"
    return LanguageModel(kind, hf_model, width, scan, recurrence)
