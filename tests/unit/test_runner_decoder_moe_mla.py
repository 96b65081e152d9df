"""MoE routing and its load-balancing loss, and MLA's latent attention: shapes, counts, math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runners.models.decoder import Decoder
from runners.models.decoder_blocks import LatentAttention, MoE
from runners.models.decoder_config import DecoderConfig, Positional

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
            max_seq_len=16)
NO_POSITIONS = Positional(None, None, None)


def moe(**extra: object) -> MoE:
    torch.manual_seed(0)
    layer = MoE(DecoderConfig(**{**TINY, "ffn": "moe", **extra}))  # type: ignore[arg-type]
    torch.nn.init.normal_(layer.gate_up, std=0.2)
    torch.nn.init.normal_(layer.down, std=0.2)
    torch.nn.init.normal_(layer.router.weight, std=0.5)
    return layer


# --- MoE ------------------------------------------------------------------------------------


def test_moe_output_is_the_weighted_sum_of_each_tokens_top2_experts() -> None:
    layer = moe()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    y, _ = layer(x)
    flat = x.reshape(-1, 32)
    probs = F.softmax(flat @ layer.router.weight.t(), dim=-1)
    expected = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        top = probs[n].topk(2)
        for weight, e in zip(top.values / top.values.sum(), top.indices.tolist(), strict=True):
            gate, up = (flat[n] @ layer.gate_up[e]).chunk(2)
            expected[n] += weight * ((F.silu(gate) * up) @ layer.down[e])
    torch.testing.assert_close(y.reshape(-1, 32), expected, rtol=1e-5, atol=1e-6)


def test_moe_routes_each_token_to_exactly_top_k_slots() -> None:
    layer = moe()
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(2))
    probs, weight, expert = layer.route(x.reshape(-1, 32))
    assert expert.shape == (21, 2) and weight.shape == (21, 2)
    assert torch.all(expert[:, 0] != expert[:, 1])
    torch.testing.assert_close(weight.sum(-1), torch.ones(21))
    assert torch.equal(expert[:, 0], probs.argmax(-1))
    layer(x)
    assert layer.last_counts is not None and int(layer.last_counts.sum()) == 21 * 2


def test_moe_aux_loss_is_one_for_uniform_router_probabilities() -> None:
    layer = moe()
    torch.nn.init.zeros_(layer.router.weight)
    _, aux = layer(torch.randn(2, 6, 32))
    assert aux.item() == pytest.approx(1.0)


def test_moe_aux_loss_matches_hand_computed_collapse() -> None:
    layer = moe(n_experts=4)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, 0] = torch.tensor([2.0, 1.0, 0.0, 0.0])
    x = torch.zeros(1, 5, 32)
    x[..., 0] = 1.0  # every token: router logits (2, 1, 0, 0)
    _, aux = layer(x)
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0, 0.0]), 0)
    # f = (1/2, 1/2, 0, 0): every token sends its two slots to experts 0 and 1.
    assert aux.item() == pytest.approx(4 * (0.5 * p[0] + 0.5 * p[1]).item(), rel=1e-6)
    assert layer.last_counts is not None and layer.last_counts.tolist() == [5, 5, 0, 0]


def test_moe_gradients_reach_router_and_experts() -> None:
    layer = moe()
    y, aux = layer(torch.randn(2, 4, 32))
    (y.square().mean() + aux).backward()
    for p in (layer.router.weight, layer.gate_up, layer.down):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_moe_counts_active_params_and_equal_flop_width() -> None:
    cfg = DecoderConfig(**{**TINY, "ffn": "moe"})  # type: ignore[arg-type]
    assert cfg.moe_hidden == 24  # ffn_hidden / top_k: equal active FFN FLOPs
    counts = Decoder(cfg).param_counts()
    per_expert = 3 * 32 * 24
    assert counts.total - counts.active == 2 * (8 - 2) * per_expert
    dense = Decoder(DecoderConfig(**TINY)).param_counts()  # type: ignore[arg-type]
    router = 2 * 32 * 8
    assert counts.active == dense.total + router  # 2 experts of 24 = one FFN of 48
    wide = DecoderConfig(**{**TINY, "ffn": "moe", "expert_hidden": 48})  # type: ignore[arg-type]
    assert wide.moe_hidden == 48


def test_decoder_loss_adds_weighted_aux() -> None:
    torch.manual_seed(3)
    model = Decoder(DecoderConfig(**{**TINY, "ffn": "moe", "aux_loss_coef": 0.5}))  # type: ignore[arg-type]
    ids = torch.randint(0, 61, (2, 9))
    out = model.forward_loss(ids[:, :-1], ids[:, 1:])
    assert out.aux is not None and out.aux.item() >= 1.0 - 1e-6
    assert out.loss.item() == pytest.approx(out.ce.item() + 0.5 * out.aux.item(), rel=1e-6)


# --- MLA ------------------------------------------------------------------------------------


def test_mla_default_dims_follow_deepseek_ratios() -> None:
    cfg = DecoderConfig(**{**TINY, "attention": "mla"})  # type: ignore[arg-type]
    assert cfg.head_dim == 8 and cfg.mla_rank == 32 and cfg.mla_rope_dim == 4
    cfg = DecoderConfig(vocab_size=10, d_model=896, n_layers=1, n_heads=14, n_kv_heads=2,
                        ffn_hidden=64, max_seq_len=8, attention="mla")
    assert (cfg.head_dim, cfg.mla_rank, cfg.mla_rope_dim) == (64, 256, 32)


def test_mla_param_count_by_hand() -> None:
    cfg = DecoderConfig(**{**TINY, "attention": "mla"})  # type: ignore[arg-type]
    layer = LatentAttention(cfg)
    d, h, hd, c, r = 32, 4, 8, 32, 4
    n = hd - r
    expected = (d * h * hd + h * hd  # q (with bias, as the baseline's)
                + d * (c + r)  # down-projection to the latent and the shared rope key
                + c  # latent norm
                + c * h * (n + hd)  # up-projection to per-head k_nope and v
                + h * hd * d)  # output
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_mla_shapes_and_latent_bottleneck() -> None:
    cfg = DecoderConfig(**{**TINY, "attention": "mla"})  # type: ignore[arg-type]
    torch.manual_seed(4)
    layer = LatentAttention(cfg)
    x = torch.randn(2, 6, 32)
    assert layer(x, NO_POSITIONS).shape == (2, 6, 32)
    latent, k_rope = layer.kv_down(x).split((cfg.mla_rank, cfg.mla_rope_dim), dim=-1)
    assert latent.shape == (2, 6, 32) and k_rope.shape == (2, 6, 4)
    # K and V depend on x only through the latent and the rope key: zeroing the down-
    # projection makes every key and value the same, so the output is the same everywhere.
    with torch.no_grad():
        layer.kv_down.weight.zero_()
    y = layer(x, NO_POSITIONS)
    torch.testing.assert_close(y, y[:, :1].expand_as(y))


def test_mla_decoder_trains_through_the_latent() -> None:
    torch.manual_seed(5)
    model = Decoder(DecoderConfig(**{**TINY, "attention": "mla"}))  # type: ignore[arg-type]
    ids = torch.randint(0, 61, (2, 9))
    model.forward_loss(ids[:, :-1], ids[:, 1:]).loss.backward()
    attn = model.blocks[0].attn
    for p in (attn.kv_down.weight, attn.kv_up.weight, attn.kv_norm.weight, attn.q.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
