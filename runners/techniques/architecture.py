"""Which architecture each pretraining technique builds, and how it is matched to the baseline.

A technique either flips one switch of the baseline decoder (GQA + RoPE + dense SwiGLU, the
Qwen2.5 recipe the paper pretrained) or replaces the decoder by a transformers baseline. The
matching rule of each is stated in words for the result, so nobody has to guess whether two
variants were compared at equal parameters, equal FLOPs or equal shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runners.kernels import nsa as nsa_kernels
from runners.models.cards import ModelCard
from runners.models.decoder import Decoder
from runners.models.decoder_config import DecoderConfig

MOE_MATCHES = ("flops", "expert")
"""`flops`: expert width = FFN / top_k (a token's active FFN FLOPs equal the dense FFN's);
`expert`: each expert as wide as the dense FFN (the paper's '0.5B x 8')."""


@dataclass(frozen=True, slots=True)
class Variant:
    """A pretraining technique: the switches it sets, or the transformers baseline it runs."""

    id: str
    group: str
    attention: str = "gqa"
    position: str = "rope"
    ffn: str = "dense"
    baseline: str | None = None
    """`mamba`, `rwkv` or `pythia`; None for the decoder."""

    def describe(self) -> dict[str, Any]:
        if self.baseline is not None:
            return {"baseline": self.baseline}
        return {"attention": self.attention, "position": self.position, "ffn": self.ffn}


VARIANTS: dict[str, Variant] = {v.id: v for v in (
    Variant("mha", "attention", attention="mha"),
    Variant("mqa", "attention", attention="mqa"),
    Variant("gqa", "attention"),
    Variant("mla", "attention", attention="mla"),
    Variant("nsa", "attention", attention="nsa"),
    Variant("rope", "positional_encoding"),
    Variant("absolute", "positional_encoding", position="absolute"),
    Variant("learned", "positional_encoding", position="learned"),
    Variant("relative", "positional_encoding", position="relative"),
    Variant("nope", "positional_encoding", position="nope"),
    Variant("dense", "moe"),
    Variant("moe", "moe", ffn="moe"),
    Variant("transformer", "attention_free"),
    Variant("mamba", "attention_free", baseline="mamba"),
    Variant("rwkv", "attention_free", baseline="rwkv"),
    Variant("pythia", "attention_free", baseline="pythia"),
)}
BASELINE = Variant("gqa", "attention")


def decoder_config(card: ModelCard, variant: Variant, seq_len: int, *, experts: int = 8,
                   top_k: int = 2, moe_match: str = "flops", aux_loss_coef: float = 0.01,
                   nsa: nsa_kernels.NSAShape | None = None) -> DecoderConfig:
    """The decoder of a card with the variant's switches (the baseline for `transformer`);
    `nsa`: NSA's block, chosen blocks and window (None: DecoderConfig's defaults)."""
    shape = {} if nsa is None else {"nsa_block_size": nsa.block_size,
                                    "nsa_block_count": nsa.block_count,
                                    "nsa_window": nsa.window}
    return DecoderConfig(
        vocab_size=card.vocab_size, d_model=card.hidden_size, n_layers=card.num_layers,
        n_heads=card.num_heads, n_kv_heads=card.num_kv_heads,
        ffn_hidden=card.intermediate_size, max_seq_len=seq_len, attention=variant.attention,
        position=variant.position, ffn=variant.ffn, rope_theta=card.rope_theta,
        qkv_bias=card.arch == "qwen2", tie_embeddings=card.tie_embeddings,
        n_experts=experts, top_k=top_k,
        expert_hidden=card.intermediate_size if moe_match == "expert" else None,
        aux_loss_coef=aux_loss_coef, **shape)


def decoder_rule(variant: Variant, cfg: DecoderConfig) -> str:
    """The matching rule of a decoder variant against the baseline, in words."""
    if variant.ffn == "moe":
        if cfg.moe_hidden * cfg.top_k == cfg.ffn_hidden:
            return (f"equal-FLOP: {cfg.n_experts} experts of width ffn/{cfg.top_k} = "
                    f"{cfg.moe_hidden}, so a token's active FFN FLOPs equal the dense FFN's")
        return (f"expert-sized: {cfg.n_experts} experts as wide as the dense FFN "
                f"({cfg.moe_hidden}); {cfg.top_k}x the dense FFN FLOPs per token")
    if variant.attention == "nsa":
        return (f"equal-width: same layers, width, head width and FFN as the baseline; NSA's "
                f"kernel groups {nsa_kernels.FLA_GROUP} query heads on each K/V head, so "
                f"{cfg.q_heads} query heads over {cfg.kv_heads} K/V heads (baseline: "
                f"{cfg.n_heads} over {cfg.n_kv_heads}), plus a gate projection (3 gates a "
                "query head)")
    what = {"mha": "K/V projections for every head", "mqa": "K/V projections for one head",
            "mla": "the latent K/V path (down- and up-projections) replaces the K/V "
                   "projections", "learned": "a learned position table",
            }.get(variant.attention if variant.attention != "gqa" else variant.position,
                  "no parameters")
    return ("equal-shape: same layers, width, heads, head width and FFN as the baseline; "
            f"only the switched component differs ({what})")


BASELINE_RULE = ("equal-params: same width, depth, vocabulary and tying as the baseline "
                 "decoder; {width} solved to match its parameters")


def attention_kernel(cfg: DecoderConfig, native_gqa: bool, cuda: bool = False) -> str:
    """How the decoder's attention reaches SDPA; `native_gqa`: CUDA with bf16/fp16 autocast,
    where flash reads grouped K/V (runners.models.decoder_blocks.native_gqa). NSA: which of
    runners.kernels.nsa's implementations runs (`cuda`: the model is on a CUDA device)."""
    if cfg.attention == "nsa":
        return nsa_kernels.describe(cuda)
    if cfg.position == "relative":
        grouped = ", K/V expanded to every head" if cfg.kv_heads < cfg.n_heads else ""
        return f"sdpa attn_mask (ALiBi bias: no flash){grouped}"
    if cfg.kv_heads == cfg.n_heads:
        return "sdpa causal (flash where available)"
    if native_gqa:
        return "sdpa causal, flash with grouped K/V (enable_gqa: no K/V copy)"
    return "sdpa causal, K/V expanded to every head"


def facts(model: Any, variant: Variant, moe_match: str, *,
          native_gqa: bool = False) -> dict[str, Any]:
    """What a result says about the model it trained (shape, MLA widths, MoE routing)."""
    if not isinstance(model, Decoder):
        return {"arch": variant.baseline, **model.describe()}
    cfg = model.cfg
    cuda = model.embed.weight.is_cuda
    out: dict[str, Any] = {
        "arch": "decoder", "layers": cfg.n_layers, "d_model": cfg.d_model,
        "heads": cfg.q_heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "ffn_hidden": cfg.ffn_hidden, "tie_embeddings": cfg.tie_embeddings,
        "attention_kernel": attention_kernel(cfg, native_gqa, cuda)}
    if cfg.attention == "nsa":
        out["kernels"] = out["attention_kernel"]
        out["nsa"] = {"block_size": cfg.nsa_block_size, "blocks": cfg.nsa_block_count,
                      "window": cfg.nsa_window, "query_heads": cfg.q_heads,
                      "kv_heads": cfg.kv_heads, "forced_blocks": "first, previous, own",
                      "compression": "mean pooling over each block (fla)",
                      "gates": "sigmoid(linear(x)), 3 a query head"}
    if cfg.attention == "mla":
        out["mla"] = {"kv_lora_rank": cfg.mla_rank, "rope_head_dim": cfg.mla_rope_dim,
                      "nope_head_dim": cfg.head_dim - cfg.mla_rope_dim,
                      "v_head_dim": cfg.head_dim, "q_compression": None,
                      "cache_per_token": cfg.mla_rank + cfg.mla_rope_dim}
    if cfg.ffn == "moe":
        out["moe"] = {"experts": cfg.n_experts, "top_k": cfg.top_k,
                      "expert_hidden": cfg.moe_hidden, "routing": "dropless",
                      "aux_loss_coef": cfg.aux_loss_coef, "match": moe_match,
                      "load_max_over_mean": load_imbalance(model)}
    return out


def load_imbalance(model: Decoder) -> float | None:
    """Most-loaded expert's slots over the mean, the worst layer of the last forward."""
    worst = None
    for block in model.blocks:
        counts = getattr(block.ffn, "last_counts", None)
        if counts is not None and counts.sum() > 0:
            ratio = float(counts.max()) / float(counts.float().mean())
            worst = ratio if worst is None else max(worst, ratio)
    return worst
