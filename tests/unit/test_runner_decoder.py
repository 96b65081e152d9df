"""The decoder's switches against hand-computed cases: positions, attention, loss, counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from runners.engines.xent import IGNORE_INDEX
from runners.models.decoder import Decoder, lm_loss
from runners.models.decoder_blocks import attend
from runners.models.decoder_config import ATTENTIONS, POSITIONS, DecoderConfig
from runners.models.positions import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_tables,
    sinusoid_table,
)

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
            max_seq_len=16)
"""A decoder small enough that every test here runs in milliseconds."""


def make(**switches: object) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**{**TINY, **switches}))  # type: ignore[arg-type]


# --- ALiBi ----------------------------------------------------------------------------------


def test_alibi_slopes_power_of_two_are_geometric() -> None:
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]


def test_alibi_slopes_between_powers_interleave_the_next_power() -> None:
    # 6 heads: the 4 slopes of 4 heads, then slopes 1 and 3 of the 8-head sequence.
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    fourteen = alibi_slopes(14)  # the 0.5B shape's heads
    assert len(fourteen) == 14 and fourteen[:8] == alibi_slopes(8)
    assert fourteen[8:] == [2.0 ** -(j + 0.5) for j in range(6)]  # 16-head slopes 1, 3, ...


def test_alibi_bias_matches_hand_computed_case() -> None:
    bias = alibi_bias(2, 3, torch.device("cpu"), torch.float32)
    inf = float("-inf")
    m0, m1 = 2.0**-4, 2.0**-8
    expected = torch.tensor([
        [[0, inf, inf], [-m0, 0, inf], [-2 * m0, -m0, 0]],
        [[0, inf, inf], [-m1, 0, inf], [-2 * m1, -m1, 0]],
    ])[None]
    assert bias.shape == (1, 2, 3, 3)
    assert torch.equal(bias, expected)


def test_alibi_attention_equals_softmax_with_the_bias() -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    bias = alibi_bias(2, 5, torch.device("cpu"), torch.float32)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    expected = scores.softmax(-1) @ v
    torch.testing.assert_close(attend(q, k, v, bias), expected, rtol=1e-5, atol=1e-6)


def test_alibi_penalises_distance_more_on_steeper_heads() -> None:
    bias = alibi_bias(4, 6, torch.device("cpu"), torch.float32)[0]
    assert bias[0, 5, 0] < bias[3, 5, 0] < 0  # head 0 has the largest slope
    assert torch.all(bias[:, 5, 4] > bias[:, 5, 0])  # nearer keys score higher


# --- rotary and absolute --------------------------------------------------------------------


def test_rope_scores_depend_only_on_the_offset() -> None:
    torch.manual_seed(2)
    cos, sin = rope_tables(12, 8, 10000.0, torch.device("cpu"), torch.float32)
    q, k = torch.randn(8), torch.randn(8)
    qs = apply_rope(q.expand(12, 8), cos, sin)
    ks = apply_rope(k.expand(12, 8), cos, sin)
    assert torch.dot(qs[5], ks[2]).item() == pytest.approx(torch.dot(qs[9], ks[6]).item(),
                                                           rel=1e-5)
    assert torch.dot(qs[0], ks[0]).item() == pytest.approx(torch.dot(q, k).item(), rel=1e-5)


def test_rope_function_matches_the_formula_and_its_gradient() -> None:
    cos, sin = rope_tables(5, 8, 10000.0, torch.device("cpu"), torch.float64)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    rotate_half = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
    expected = x * cos[:, None] + rotate_half * sin[:, None]  # [B, T, heads, D] layout
    torch.testing.assert_close(apply_rope(x, cos[:, None], sin[:, None]), expected)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos[:, None], sin[:, None]), (x,))


def test_sinusoid_table_follows_vaswani() -> None:
    table = sinusoid_table(3, 4, torch.device("cpu"))
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert table[1, 0].item() == pytest.approx(math.sin(1.0))
    assert table[1, 1].item() == pytest.approx(math.cos(1.0))
    assert table[2, 2].item() == pytest.approx(math.sin(2 / 100.0))


# --- the decoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("switch", [("attention", a) for a in ATTENTIONS]
                         + [("position", p) for p in POSITIONS] + [("ffn", "moe")])
def test_every_variant_is_causal(switch: tuple[str, str]) -> None:
    model = make(**{switch[0]: switch[1]}).eval()
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % 61
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 10, 61)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_nope_and_rope_differ_only_in_positions() -> None:
    rope, nope = make(position="rope"), make(position="nope")
    assert sum(p.numel() for p in rope.parameters()) == sum(p.numel() for p in nope.parameters())
    ids = torch.randint(0, 61, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(rope(ids), nope(ids))


def test_kv_heads_by_attention() -> None:
    assert [DecoderConfig(**{**TINY, "attention": a}).kv_heads
            for a in ATTENTIONS] == [4, 1, 2, 4, 1]


def test_attention_params_differ_by_kv_projections_only() -> None:
    d, hd, layers = TINY["d_model"], 8, TINY["n_layers"]
    totals = {a: make(attention=a).param_counts().total for a in ("mha", "mqa", "gqa")}

    def kv(heads: int) -> int:
        return layers * 2 * (d * heads * hd + heads * hd)  # weights and biases of K and V

    assert totals["mha"] - totals["gqa"] == kv(4) - kv(2)
    assert totals["gqa"] - totals["mqa"] == kv(2) - kv(1)


def test_learned_table_and_untied_embedding_are_not_flop_params() -> None:
    learned = make(position="learned").param_counts()
    assert learned.total - learned.flop == TINY["max_seq_len"] * TINY["d_model"]
    untied = make(tie_embeddings=False).param_counts()
    assert untied.total - untied.flop == TINY["vocab_size"] * TINY["d_model"]
    assert untied.total == make().param_counts().total + TINY["vocab_size"] * TINY["d_model"]


def test_longer_than_max_seq_len_is_refused() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        make(position="learned")(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(attention="swa"), dict(position="xpos"), dict(ffn="glu"),
                                 dict(n_heads=5), dict(n_kv_heads=3), dict(top_k=9),
                                 dict(attention="mla", rope_head_dim=8)])
def test_config_rejects_bad_switches(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DecoderConfig(**{**TINY, **bad})  # type: ignore[arg-type]


# --- loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_lm_loss_is_the_mean_over_scored_targets(chunk: int | None) -> None:
    torch.manual_seed(5)
    h = torch.randn(23, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    t = torch.randint(0, 40, (23,))
    t[[2, 11]] = IGNORE_INDEX
    ours = lm_loss(h, w, t, chunk_rows=chunk)
    gh, gw = torch.autograd.grad(ours, (h, w))
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE_INDEX)
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-6)


def test_forward_loss_equals_cross_entropy_of_full_logits() -> None:
    model = make()
    ids = torch.randint(0, 61, (3, 9), generator=torch.Generator().manual_seed(8))
    out = model.forward_loss(ids[:, :-1], ids[:, 1:], chunk_rows=5)
    ref = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert out.aux is None and out.loss is out.ce
    assert out.ce.item() == pytest.approx(ref.item(), rel=1e-5)


# --- grouped K/V and the run-time options ------------------------------------------------------


def test_attend_takes_grouped_kv_and_equals_the_expanded_heads() -> None:
    from runners.models.decoder_blocks import expand_kv, native_gqa

    torch.manual_seed(3)
    q = torch.randn(2, 4, 6, 8)
    k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    assert not native_gqa(q, None)  # CPU: K/V are expanded (the fused CPU kernel wants it)
    expected = F.scaled_dot_product_attention(q, expand_kv(k, 4), expand_kv(v, 4),
                                              is_causal=True)
    torch.testing.assert_close(attend(q, k, v, None), expected)
    bias = alibi_bias(4, 6, torch.device("cpu"), torch.float32)
    expected = F.scaled_dot_product_attention(q, expand_kv(k, 4), expand_kv(v, 4),
                                              attn_mask=bias)
    torch.testing.assert_close(attend(q, k, v, bias), expected)


def test_uncompile_restores_eager_blocks() -> None:
    model = make()
    assert model.compile_blocks.__doc__ and "share one" in model.compile_blocks.__doc__
    for block in model.blocks:  # what nn.Module.compile leaves behind, without compiling
        block._compiled_call_impl = lambda *a, **k: None
    model.uncompile_blocks()
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())
    ids = torch.randint(0, TINY["vocab_size"], (1, 8))
    assert model(ids).shape == (1, 8, TINY["vocab_size"])
