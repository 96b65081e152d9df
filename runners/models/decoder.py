"""One compact decoder whose attention, positional encoding and FFN are switches.

The baseline is a Qwen2.5-style block: RMSNorm pre-norm, grouped-query attention with rotary
positions and q/k/v biases, a SwiGLU FFN, tied embeddings. A pretraining technique flips one
switch, so a comparison changes one thing:

- attention: `mha` (KV heads = heads), `mqa` (one KV head), `gqa` (the card's KV heads),
  `mla` (DeepSeek-V2 multi-head latent attention, see `LatentAttention`), `nsa` (native
  sparse attention, runners.models.decoder_nsa).
- position: `rope`, `absolute` (sinusoidal, Vaswani et al. 2017), `learned` (a GPT-2 table),
  `relative` (ALiBi bias, Press et al. 2022), `nope` (none: causal masking alone).
- ffn: `dense` (SwiGLU), `moe` (8 experts, top-2, dropless, see `MoE`).

The attention and FFN modules live in runners.models.decoder_blocks, the config in
runners.models.decoder_config.

Attention runs through torch's `scaled_dot_product_attention`, so the flash kernel runs where
the device has one. On CUDA in bf16/fp16 without a bias, GQA and MQA pass their few K/V heads
straight to SDPA (`enable_gqa=True`, which flash reads natively, with no copy); elsewhere
(CPU, fp32, a bias) they expand K/V to all query heads first, because the other fused
kernels refuse unequal head counts and SDPA would fall back to its math kernel. ALiBi is
the exception to flash: flash takes no bias, so its bias goes in as `attn_mask` (the
memory-efficient kernel on CUDA, the math kernel on CPU) and the [heads, T, T] bias is built
once per length and device.

Two run-time options leave the model's math unchanged: `compile_blocks` compiles each block
with torch.compile (the blocks are identical, so one compiled graph serves all of them), and
`checkpoint_blocks` recomputes each block's activations in the backward pass instead of
keeping them (activation checkpointing: less memory, one more forward of compute).

The loss is the shared chunked cross-entropy of runners.engines.xent (`lm_loss`): logits are made
one chunk of tokens at a time and each chunk's gradient is computed at once, so the [tokens,
vocab] logits never exist whole (at the 0.5B shape and batch 8 x 2048 the fp32 logits alone
would take 10 GB).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from runners.engines.xent import IGNORE_INDEX, LossOptions, chunked_cross_entropy
from runners.models.decoder_blocks import LatentAttention, MoE, SelfAttention, SwiGLU
from runners.models.decoder_config import DecoderConfig, Positional
from runners.models.decoder_nsa import SparseAttention
from runners.models.positions import alibi_bias, rope_tables, sinusoid_table


class LossOut(NamedTuple):
    loss: Tensor
    """What backward runs on: cross-entropy + aux_loss_coef x aux."""
    ce: Tensor
    """Mean next-token cross-entropy (nats)."""
    aux: Tensor | None
    """Mean load-balancing loss of the MoE layers; None without experts."""


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Parameter counts of a model, each tensor once."""

    total: int
    active: int
    """Parameters one token uses: MoE experts count top_k / n_experts."""
    flop: int
    """Parameters that multiply each token (the N of 6N): active minus lookup-only tables
    (an untied input embedding, a learned position table)."""


# --- the model ------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn: nn.Module = LatentAttention(cfg) if cfg.attention == "mla" else \
            SparseAttention(cfg) if cfg.attention == "nsa" else SelfAttention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn: nn.Module = MoE(cfg) if cfg.ffn == "moe" else SwiGLU(cfg.d_model,
                                                                       cfg.ffn_hidden)

    def forward(self, x: Tensor, pos: Positional) -> tuple[Tensor, Tensor | None]:
        x = x + self.attn(self.attn_norm(x), pos)
        y = self.ffn(self.ffn_norm(x))
        aux = None
        if isinstance(y, tuple):
            y, aux = y
        return x + y, aux


class Decoder(nn.Module):
    """Token ids -> hidden states -> next-token loss, with the switches of DecoderConfig."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpoint_blocks = False
        """Recompute each block's activations in backward (set by the runner)."""
        self.loss_options = LossOptions()
        """How the chunked loss runs (set by the runner; the same math either way)."""
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_table = nn.Embedding(cfg.max_seq_len, cfg.d_model) \
            if cfg.position == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size,
                                                              bias=False)
        self._tables: dict[tuple[Any, ...], Any] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 layers)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MoE):
                nn.init.normal_(module.gate_up, std=std)
                nn.init.normal_(module.down, std=out_std)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=out_std)
            if isinstance(block.ffn, SwiGLU):
                nn.init.normal_(block.ffn.down.weight, std=out_std)

    def head_weight(self) -> Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    # -- forward ---------------------------------------------------------------------------

    def _act_dtype(self, device: torch.device) -> torch.dtype:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.embed.weight.dtype

    def _table(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """Position tables, built once per (kind, length, device, dtype)."""
        if torch.is_inference_mode_enabled():
            return build()  # inference tensors must not be cached for later training
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]

    def positional(self, seq_len: int, device: torch.device) -> Positional:
        cfg, dtype = self.cfg, self._act_dtype(device)
        rope = rope_latent = bias = None
        if cfg.position == "rope":
            dim = cfg.mla_rope_dim if cfg.attention == "mla" else cfg.head_dim

            def build() -> tuple[Tensor, Tensor]:
                cos, sin = rope_tables(seq_len, dim, cfg.rope_theta, device, dtype)
                return cos[:, None], sin[:, None]

            tables = self._table(("rope", seq_len, dim, device, dtype), build)
            if cfg.attention == "mla":
                rope_latent = tables
            else:
                rope = tables
        elif cfg.position == "relative":
            bias = self._table(("alibi", seq_len, device, dtype),
                               lambda: alibi_bias(cfg.n_heads, seq_len, device, dtype))
        return Positional(rope, rope_latent, bias)

    def hidden(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """Final-norm hidden states [B, T, d] of ids [B, T], and the mean MoE aux loss."""
        cfg = self.cfg
        seq_len = ids.shape[1]
        if seq_len > cfg.max_seq_len:
            raise ValueError(f"sequence of {seq_len} tokens exceeds max_seq_len "
                             f"{cfg.max_seq_len}")
        x = self.embed(ids)
        if cfg.position == "absolute":
            # The original Transformer's recipe: embeddings scaled by sqrt(d) so the unit-
            # amplitude sinusoids do not drown them.
            table = self._table(("sin", seq_len, x.device),
                                lambda: sinusoid_table(seq_len, cfg.d_model, x.device))
            x = x * math.sqrt(cfg.d_model) + table
        elif self.pos_table is not None:
            x = x + self.pos_table.weight[:seq_len]
        pos = self.positional(seq_len, ids.device)
        aux_sum: Tensor | None = None
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x, aux = torch.utils.checkpoint.checkpoint(block, x, pos, use_reentrant=False)
            else:
                x, aux = block(x, pos)
            if aux is not None:
                aux_sum = aux if aux_sum is None else aux_sum + aux
        aux_mean = None if aux_sum is None else aux_sum / cfg.n_layers
        return self.norm(x), aux_mean

    def forward(self, ids: Tensor) -> Tensor:
        """Full logits [B, T, vocab]; for small inputs (training uses forward_loss)."""
        h, _ = self.hidden(ids)
        return F.linear(h, self.head_weight())

    def forward_loss(self, inputs: Tensor, targets: Tensor, *,
                     chunk_rows: int | None = None) -> LossOut:
        h, aux = self.hidden(inputs)
        ce = lm_loss(h, self.head_weight(), targets, chunk_rows=chunk_rows,
                     options=self.loss_options)
        loss = ce if aux is None else ce + self.cfg.aux_loss_coef * aux
        return LossOut(loss, ce, aux)

    # -- compilation -----------------------------------------------------------------------

    def compile_blocks(self, **options: Any) -> str:
        """torch.compile each block in place (`nn.Module.compile`: the module object and its
        parameters stay; the first call traces). The 24 blocks of a model share one
        compiled graph: dynamo inlines nn modules and takes their parameters as inputs, so
        identical blocks hit the same cache entry. MoE blocks compile their attention only:
        dropless routing syncs with the host and sizes its matmuls by the routing counts, so
        the expert FFN stays eager. Returns what was compiled, in words."""
        moe = self.cfg.ffn == "moe"
        for block in self.blocks:
            (block.attn if moe else block).compile(**options)
        what = "attention of each block" if moe else "each decoder block"
        return f"{what} ({len(self.blocks)} x torch.compile)"

    def uncompile_blocks(self) -> None:
        """Back to eager (after a failed compile)."""
        for module in self.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None

    # -- facts -----------------------------------------------------------------------------

    def param_counts(self) -> ParamCounts:
        cfg = self.cfg
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        if cfg.ffn == "moe":
            per_expert = 3 * cfg.d_model * cfg.moe_hidden
            inactive = cfg.n_layers * (cfg.n_experts - cfg.top_k) * per_expert
        lookup = 0 if self.pos_table is None else self.pos_table.weight.numel()
        if self.head is not None:
            lookup += self.embed.weight.numel()
        active = total - inactive
        return ParamCounts(total=total, active=active, flop=active - lookup)

    def attention_shape(self) -> tuple[int, int]:
        """(layers, heads x q/k head width): the L and d of the 12 L d T attention FLOPs."""
        return self.cfg.n_layers, self.cfg.q_heads * self.cfg.head_dim

    def attention_context(self, seq_len: int) -> int:
        """The T of the 12 L d T attention FLOPs: keys a query meets, counted as dense
        attention counts them (the full square). NSA: its compressed keys, 1.5 x seq_len /
        block (attended, then scored again for the choice, q k only), plus the chosen
        blocks' and the window's keys, each at most seq_len."""
        cfg = self.cfg
        if cfg.attention != "nsa":
            return seq_len
        return (math.ceil(1.5 * seq_len / cfg.nsa_block_size)
                + min(seq_len, cfg.nsa_block_count * cfg.nsa_block_size)
                + min(seq_len, cfg.nsa_window))


# --- loss -----------------------------------------------------------------------------------


def lm_loss(h: Tensor, weight: Tensor, targets: Tensor, *,
            chunk_rows: int | None = None, options: LossOptions | None = None) -> Tensor:
    """Mean next-token cross-entropy of the logits h @ weight.T over the targets that are not
    IGNORE_INDEX, through the shared chunked loss (runners.engines.xent): logits are made a chunk
    of rows at a time and each chunk's gradient is computed at once, so the [tokens, vocab]
    logits never exist whole; bf16 matmuls under autocast, fp32 softmax and loss. `options`:
    a compiled chunk and fp32-accumulating GEMMs (see LossOptions); default: neither."""
    total, count = chunked_cross_entropy(h, weight, targets, chunk_rows=chunk_rows,
                                         ignore_index=IGNORE_INDEX, options=options)
    return total / max(count, 1)
