"""The decoder's shape and switches (`DecoderConfig`) and what attention is told about
positions (`Positional`): the records runners.models.decoder and runners.models.decoder_blocks
share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from runners.kernels.nsa import FLA_GROUP, NSAShape
from runners.params import nsa_problem

ATTENTIONS = ("mha", "mqa", "gqa", "mla", "nsa")
POSITIONS = ("rope", "absolute", "learned", "relative", "nope")
FFNS = ("dense", "moe")


@dataclass(frozen=True)
class DecoderConfig:
    """The shape of a decoder and its three switches."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    """KV heads of `gqa`; `mha` uses n_heads and `mqa` one, whatever this says."""
    ffn_hidden: int
    """SwiGLU hidden width of the dense FFN."""
    max_seq_len: int
    """Longest sequence; sizes the `learned` position table."""
    attention: str = "gqa"
    position: str = "rope"
    ffn: str = "dense"
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    """Biases on the q/k/v projections, as Qwen2 has."""
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    n_experts: int = 8
    top_k: int = 2
    expert_hidden: int | None = None
    """SwiGLU width of one expert; None: ffn_hidden // top_k, so a token's active FFN FLOPs
    equal the dense FFN's (equal-FLOP matching; the FFN holds n_experts / top_k x the params)."""
    aux_loss_coef: float = 0.01
    """Weight of the load-balancing loss (Switch Transformer's 0.01)."""
    kv_lora_rank: int | None = None
    """MLA latent width; None: 4 x head_dim (DeepSeek-V2: 512 for its 128-wide heads)."""
    rope_head_dim: int | None = None
    """MLA decoupled rotary width per head; None: head_dim // 2 (DeepSeek-V2: 64 of 128)."""
    nsa_block_size: int = 64
    """NSA: tokens per block (compression and selection)."""
    nsa_block_count: int = 8
    """NSA: blocks each query attends at full resolution (1 initial + 2 local among them)."""
    nsa_window: int = 256
    """NSA: sliding-window tokens; 0 drops the window branch."""
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
                     "max_seq_len", "n_experts", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        if self.d_model % self.n_heads or self.head_dim % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} heads "
                             "of an even width")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"{self.n_heads} heads do not group over {self.kv_heads} KV heads")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k {self.top_k} exceeds {self.n_experts} experts")
        if self.attention == "mla" and not 0 < self.mla_rope_dim < self.head_dim:
            raise ValueError(f"MLA rope width {self.mla_rope_dim} must lie in "
                             f"(0, {self.head_dim})")
        if self.attention == "nsa":
            problem = nsa_problem(self.nsa_block_size, self.nsa_block_count, self.nsa_window,
                                  self.head_dim)
            if problem:
                raise ValueError(problem)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """KV heads of this attention (MLA: every head gets its own up-projected K and V;
        NSA: one per 16 of the card's heads, at least one)."""
        return {"mha": self.n_heads, "mqa": 1, "gqa": self.n_kv_heads,
                "mla": self.n_heads, "nsa": max(1, self.n_heads // FLA_GROUP)}[self.attention]

    @property
    def q_heads(self) -> int:
        """Query heads: n_heads, except NSA's 16 per K/V head (its kernel's group)."""
        return FLA_GROUP * self.kv_heads if self.attention == "nsa" else self.n_heads

    @property
    def nsa_shape(self) -> NSAShape:
        return NSAShape(self.nsa_block_size, self.nsa_block_count, self.nsa_window)

    @property
    def moe_hidden(self) -> int:
        return self.expert_hidden or max(1, self.ffn_hidden // self.top_k)

    @property
    def mla_rank(self) -> int:
        return self.kv_lora_rank or 4 * self.head_dim

    @property
    def mla_rope_dim(self) -> int:
        return self.rope_head_dim or self.head_dim // 2


class Positional(NamedTuple):
    """What attention needs to know about positions, built once per forward."""

    rope: tuple[Tensor, Tensor] | None
    """(cos, sin) [T, 1, head_dim] for rotary q/k; None when positions are not rotary."""
    rope_latent: tuple[Tensor, Tensor] | None
    """(cos, sin) [T, 1, rope width] for MLA's decoupled rotary part."""
    bias: Tensor | None
    """ALiBi attention bias [1, heads, T, T] with the causal -inf; None: causal SDPA."""
