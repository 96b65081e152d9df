"""Decode engines and the perplexity scorer on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from runners import catalog
from runners import model as model_mod
from runners.decode import ENGINES, GenerateEngine, LoopEngine
from runners.inference import perplexity


@pytest.fixture(scope="module")
def tiny() -> model_mod.BuiltModel:
    return model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)


def test_engines_are_registered_by_name() -> None:
    assert ENGINES == {"loop": LoopEngine, "eager": GenerateEngine}


def test_own_loop_decodes_what_generate_decodes(tiny: model_mod.BuiltModel) -> None:
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    t_loop, out_loop = LoopEngine(tiny.model, 12, None)(ids)
    t_gen, out_gen = GenerateEngine(tiny.model, 12, None, pad_token_id=258)(ids)
    assert out_loop.shape == out_gen.shape == (2, 12)
    assert torch.equal(out_loop, out_gen)
    for t in (t_loop, t_gen):
        assert 0 < t.ttft_s <= t.latency_s


def test_forced_length_ignores_eos(tiny: model_mod.BuiltModel) -> None:
    # Make EOS (257) the argmax everywhere: decoding must still run the full length.
    model = tiny.model
    bias = torch.zeros(model.config.vocab_size)
    bias[257] = 1e4
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        ids = torch.zeros((1, 4), dtype=torch.long)
        _, out = GenerateEngine(model, 5, None, pad_token_id=258)(ids)
        assert out.shape == (1, 5)
        _, out = LoopEngine(model, 5, None)(ids)
        assert out.tolist() == [[257] * 5]
    finally:
        handle.remove()


def test_uniform_model_perplexity_is_the_vocab_size() -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)
    with torch.no_grad():
        built.model.lm_head.weight.zero_()  # logits all 0: every token has p = 1/260
    ids = list(range(100))
    assert perplexity(built.model, ids, "cpu", 1024) == pytest.approx(260.0, rel=1e-5)
    assert perplexity(built.model, ids, "cpu", 30) == pytest.approx(260.0, rel=1e-5)
    assert perplexity(built.model, [1], "cpu", 30) is None


def test_random_model_perplexity_is_finite(tiny: model_mod.BuiltModel) -> None:
    ppl = perplexity(tiny.model, list(b"some held-out text for scoring"), "cpu", 1024)
    assert ppl is not None and math.isfinite(ppl) and ppl > 1
