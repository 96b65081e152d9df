"""A lean decode path for Llama-family checkpoints (llama, qwen2, mistral): the same model and
the same weights, stepped with fewer, larger kernels than transformers' generic forward.

What changes against `model(input_ids, past_key_values=StaticCache)`:

- **Fused projections.** Each layer's q, k and v projections become one matmul over the
  row-wise concatenation of their weights, and gate and up one more (the layout vLLM's merged
  linear layers use): five small matmuls a layer become two. The concatenated tensors *are*
  the weights afterwards: the original modules are re-pointed at views of them, so memory is
  not doubled and the transformers model (used for perplexity) still computes with them.
- **Own static KV cache**, [batch, kv_heads, max_len, head_dim] per layer, written in place at
  a device-side position, so a decode step depends on nothing on the host (a CUDA graph can
  replay it).
- **GQA decode attention without copies**: the query's heads are grouped per KV head and
  multiplied against the cache directly, where transformers' SDPA path with a mask expands
  (copies) every KV head `heads / kv_heads` times a step.
- **No per-step mask construction**: the valid prefix of the cache is one comparison against
  the position.

The math is transformers' own (RMSNorm in float32 and cast back, rotary tables from the
model's own rotary module so any `rope_scaling` applies, SiLU-gated MLP, scale
`head_dim ** -0.5`), so greedy tokens match the stock forward up to floating-point
reassociation; the tests check that on the CPU in float32.

Projections that are not plain `nn.Linear` with an ordinary weight (optimum-quanto's
quantized modules, torchao's quantized weight tensors) are called as they are, unfused:
their kernels stay the quantization's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from runners.errors import Unsupported

ARCHS = ("llama", "qwen2", "mistral")
"""`config.model_type`s whose decoder layer this module reproduces exactly."""


@dataclass(slots=True)
class _Layer:
    norm1: Tensor
    norm2: Tensor
    qkv: Any
    """A weight [q+k+v out, hidden] (fused) or a (q, k, v) tuple of modules (unfused)."""
    qkv_bias: Tensor | None
    o: nn.Module
    gate_up: Any
    """A weight [2 * ffn, hidden] (fused) or a (gate, up) tuple of modules."""
    down: nn.Module


def _plain(module: nn.Module) -> bool:
    """An `nn.Linear` holding an ordinary tensor: not a quantized module (optimum-quanto
    swaps the class) nor a quantized weight in a plain Linear (torchao swaps the tensor)."""
    weight = getattr(module, "weight", None)
    return type(module) is nn.Linear and isinstance(weight, torch.Tensor) and \
        type(weight.data) is torch.Tensor


def _fuse(mods: tuple[nn.Linear, ...]) -> tuple[Tensor, Tensor | None]:
    """Concatenate the modules' weights (and biases) row-wise and re-point each module at its
    slice, so the fused tensor is the only copy. Fusing the same modules again (a new request
    shape) returns the tensors of the first fusion while the modules still use them."""
    done = getattr(mods[0], "_lean_fused", None)
    if done is not None:
        weight, bias = done
        row, same = 0, True
        for m in mods:
            same = same and m.weight.data_ptr() == weight[row].data_ptr()
            row += m.out_features
        if same:
            return weight, bias
    with torch.no_grad():
        weight = torch.cat([m.weight for m in mods], dim=0).contiguous()
        has_bias = [m.bias is not None for m in mods]
        bias = None
        if any(has_bias):
            bias = torch.cat([m.bias if m.bias is not None else
                              torch.zeros(m.out_features, dtype=m.weight.dtype,
                                          device=m.weight.device) for m in mods]).contiguous()
        row = 0
        for m, b in zip(mods, has_bias, strict=True):
            n = m.out_features
            m.weight = nn.Parameter(weight[row:row + n], requires_grad=False)
            if b:
                assert bias is not None
                m.bias = nn.Parameter(bias[row:row + n], requires_grad=False)
            row += n
    mods[0]._lean_fused = (weight, bias)  # type: ignore[assignment]
    return weight, bias


def supported(model: Any, max_len: int) -> str | None:
    """Why this model cannot take the lean path (None when it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHS:
        return f"the lean decode path covers {', '.join(ARCHS)} models, not {kind!r}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (the lean path implements silu)"
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "rotary_emb") or not hasattr(body, "layers"):
        return "no decoder body with a rotary embedding module"
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ()
    sliding = "sliding_attention" in types or (
        kind == "mistral" and window is not None)
    if sliding and window is not None and max_len > window:
        return f"a sliding window of {window} tokens shorter than the cache ({max_len})"
    attn = body.layers[0].self_attn
    for extra in ("q_norm", "k_norm"):
        if hasattr(attn, extra):
            return f"attention with {extra} (not a plain Llama-family layer)"
    return None


class LeanDecoder:
    """Prefill and decode steps over the model's own weights and an own static KV cache.

    `step()` feeds `tok` [batch, 1] at position `pos` and leaves the greedy next token in
    `tok`; it reads and writes only device tensors, so it can be captured in a CUDA graph.
    """

    def __init__(self, model: Any, batch: int, max_len: int, attention: str = "auto") -> None:
        why = supported(model, max_len)
        if why is not None:
            raise Unsupported(f"engine 'fused': {why}")
        cfg = model.config
        body = model.model
        self.model = model
        self.embed = body.embed_tokens
        self.norm = body.norm.weight
        self.eps = float(getattr(body.norm, "variance_epsilon", getattr(cfg, "rms_norm_eps", 1e-6)))
        self.head = model.lm_head
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        weight = self.embed.weight
        device, dtype = weight.device, weight.dtype
        self.layers: list[_Layer] = []
        self.fused = True
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            q_k_v = (a.q_proj, a.k_proj, a.v_proj)
            if all(_plain(p) for p in (*q_k_v, m.gate_proj, m.up_proj)):
                qkv, qkv_bias = _fuse(q_k_v)
                gate_up, gate_up_bias = _fuse((m.gate_proj, m.up_proj))
                if gate_up_bias is not None:
                    raise Unsupported("engine 'fused': MLP projections with biases")
                self.layers.append(_Layer(layer.input_layernorm.weight,
                                          layer.post_attention_layernorm.weight,
                                          qkv, qkv_bias, a.o_proj, gate_up, m.down_proj))
            else:
                self.fused = False
                self.layers.append(_Layer(layer.input_layernorm.weight,
                                          layer.post_attention_layernorm.weight,
                                          q_k_v, None, a.o_proj, (m.gate_proj, m.up_proj),
                                          m.down_proj))
        self.q_out = self.heads * self.head_dim
        self.kv_out = self.kv_heads * self.head_dim
        self.max_len = max_len
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        with torch.no_grad():
            positions = torch.arange(max_len, device=device)[None]
            cos, sin = body.rotary_emb(weight[:1], positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim], in the model's dtype
        self.slots = torch.arange(max_len, device=device)
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        self.attention = self._attention(attention, device)
        self._kernel = None
        if self.attention == "triton":
            from runners.kernels import decode_attention

            self._kernel = decode_attention.decode_attention
        self.keep_logits = False
        """Keep the last step's logits in `logits` (checks; off in measured runs)."""
        self.logits: Tensor | None = None

    def _attention(self, asked: str, device: torch.device) -> str:
        """`triton` (runners.kernels.decode_attention: rotary, cache write and attention in one
        kernel
        a layer) where it can run, else `torch`; `auto` prefers the kernel on CUDA."""
        if asked not in ("auto", "torch", "triton"):
            raise ValueError(f"attention {asked!r} not in auto, torch, triton")
        if asked == "torch":
            return "torch"
        from runners.kernels import decode_attention

        why = None
        if device.type != "cuda" or not decode_attention.available():
            why = "needs Triton and a CUDA device"
        else:
            why = decode_attention.supports(self.head_dim, self.group)
        if why is None:
            return "triton"
        if asked == "triton":
            raise Unsupported(f"decode attention kernel: {why}")
        return "torch"

    # -- pieces --------------------------------------------------------------------------------

    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer: _Layer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(layer.qkv, Tensor):
            out = F.linear(x, layer.qkv, layer.qkv_bias)
            return out.split((self.q_out, self.kv_out, self.kv_out), dim=-1)
        q, k, v = layer.qkv
        return q(x), k(x), v(x)

    def _mlp(self, layer: _Layer, x: Tensor) -> Tensor:
        if isinstance(layer.gate_up, Tensor):
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
        else:
            gate, up = layer.gate_up[0](x), layer.gate_up[1](x)
        return layer.down(F.silu(gate) * up)

    def _logits_token(self, x: Tensor) -> Tensor:
        logits = self.head(self._rms(x[:, -1:, :], self.norm))[:, -1, :]
        if self.keep_logits:
            self.logits = logits
        return logits.argmax(dim=-1, keepdim=True)

    # -- steps ---------------------------------------------------------------------------------

    def prefill(self, ids: Tensor) -> Tensor:
        """Run the prompt [batch, seq] from position 0 (the cache is overwritten, never
        cleared: slots past the prompt are masked until written); returns the first token."""
        batch, seq = ids.shape
        x = self.embed(ids)
        cos, sin = self.cos[:seq], self.sin[:seq]
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1)
            q, k, v = self._qkv(layer, h)
            q = self._rotate(q.view(batch, seq, self.heads, self.head_dim).transpose(1, 2),
                             cos, sin)
            k = self._rotate(k.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2),
                             cos, sin)
            v = v.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
            self.k_cache[i][:, :, :seq] = k
            self.v_cache[i][:, :, :seq] = v
            if self.group > 1:
                k = k.repeat_interleave(self.group, dim=1)
                v = v.repeat_interleave(self.group, dim=1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            x = x + layer.o(att.transpose(1, 2).reshape(batch, seq, self.q_out))
            x = x + self._mlp(layer, self._rms(x, layer.norm2))
        token = self._logits_token(x)
        self.tok.copy_(token)
        self.pos.fill_(seq)
        return token

    def step(self) -> Tensor:
        """One decode step: feed `tok` at `pos`, leave the next greedy token in `tok`."""
        x = self.embed(self.tok)  # [batch, 1, hidden]
        attend = self._attend_kernel if self._kernel is not None else self._attend_torch()
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, self._rms(x, layer.norm1))
            # the layer's caches go in as tensors, not its index: under torch.compile the
            # attention is its own frame (the Triton launch breaks the graph), and an int
            # argument would make Dynamo recompile it per layer until its recompile limit
            # (8), leaving the later layers' attention uncompiled
            x = x + layer.o(attend(self.k_cache[i], self.v_cache[i], q, k, v))
            x = x + self._mlp(layer, self._rms(x, layer.norm2))
        token = self._logits_token(x)
        self.tok.copy_(token)
        self.pos.add_(1)
        return token

    def _attend_kernel(self, kc: Tensor, vc: Tensor, q: Tensor, k: Tensor, v: Tensor
                       ) -> Tensor:
        """Rotary, cache write (into a layer's caches `kc`, `vc`) and attention in one
        Triton kernel."""
        q = q[:, 0]
        assert self._kernel is not None
        att = self._kernel(q, k[:, 0], v[:, 0], self.cos, self.sin, kc, vc, self.pos,
                           self.scale, torch.empty_like(q))
        return att.view(q.shape[0], 1, self.q_out)

    def _attend_torch(self) -> Any:
        """The same attention in torch ops, with this step's rotary rows and cache mask."""
        pos = self.pos
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        valid = (self.slots <= pos).view(1, 1, 1, self.max_len)

        def attend(kc: Tensor, vc: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            batch = q.shape[0]
            q = self._rotate(q.view(batch, self.kv_heads, self.group, self.head_dim), cos, sin)
            k = self._rotate(k.view(batch, self.kv_heads, 1, self.head_dim), cos, sin)
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v.view(batch, self.kv_heads, 1, self.head_dim))
            # [b, kv, group, d] x [b, kv, d, len]: every query head of a group reads its KV
            # head's cache once, with no expanded copy.
            scores = torch.matmul(q, kc.transpose(-1, -2)).float() * self.scale
            probs = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1).to(q.dtype)
            return torch.matmul(probs, vc).reshape(batch, 1, self.q_out)

        return attend

    def describe(self) -> dict[str, Any]:
        return {"decoder": "lean (own static cache, GQA decode attention without copies)",
                "fused_projections": self.fused, "decode_attention": self.attention}
