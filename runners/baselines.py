"""Attention-free and other baselines from transformers' own classes, random init, scaled to a
size preset: Mamba (MambaForCausalLM), RWKV (RwkvForCausalLM), Pythia (GPTNeoXForCausalLM).

Matching (equal parameters): each keeps the preset's width, depth, vocabulary and embedding
tying, and its one free width (Mamba's inner width, RWKV's and Pythia's FFN width) is solved
so that its total parameters equal the baseline decoder's (GQA + RoPE + dense), rounded to a
multiple of 64. Parameter counts are linear in that width, so two meta-device builds give the
exact solution without allocating anything.

Kernels: without the `mamba_ssm` / `causal_conv1d` packages Mamba runs transformers' reference
PyTorch scan (a Python loop over time steps that keeps [batch, inner, T, state] fp32 tensors
per layer for backward), and RWKV without its hub kernel runs a Python loop over time steps.
Both are far slower and larger than the fused kernels; `kernels` in the result says which ran.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor, nn

from runners.catalog import ModelCard
from runners.decoder import LossOut, ParamCounts, lm_loss

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


def kernels(kind: str) -> str:
    """Which implementation of the recurrence runs (what the timings measure)."""
    if kind == "mamba":
        fast = importlib.util.find_spec("mamba_ssm") and importlib.util.find_spec(
            "causal_conv1d")
        return "mamba_ssm fused kernels" if fast else \
            "transformers reference PyTorch scan (mamba_ssm/causal_conv1d not installed)"
    if kind == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        return "RWKV CUDA kernel" if modeling_rwkv.rwkv_cuda_kernel is not None else \
            "transformers Python loop over time steps (RWKV CUDA kernel not loaded)"
    return "sdpa attention"


class LanguageModel(nn.Module):
    """A transformers causal LM trained through the same loss as the decoder: its base model's
    final hidden states through the chunked `lm_loss` with its output embedding."""

    def __init__(self, kind: str, hf_model: Any, width: int) -> None:
        super().__init__()
        self.kind = kind
        self.hf = hf_model
        self.width = width

    def forward_loss(self, inputs: Tensor, targets: Tensor, *,
                     chunk_rows: int | None = None) -> LossOut:
        h = self.hf.base_model(input_ids=inputs, use_cache=False).last_hidden_state
        ce = lm_loss(h, self.hf.get_output_embeddings().weight, targets, chunk_rows=chunk_rows)
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
        return {"class": type(self.hf).__name__, "width_name": "intermediate_size",
                "width": self.width, "kernels": kernels(self.kind)}


def build(kind: str, card: ModelCard, seq_len: int, device: str, seed: int,
          target_params: int) -> LanguageModel:
    """`kind` at the card's shape, width matched to `target_params`, random init from `seed`,
    fp32 parameters on `device`, in training mode."""
    width = matched_width(kind, card, seq_len, target_params)
    config = _config(kind, card, seq_len, width)
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = _instantiate(kind, config)
    hf_model.train()
    return LanguageModel(kind, hf_model, width)
