"""Decode engines and the perplexity scorer on the tiny model (and SmolLM2's real weights)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from runners.engines.decode import (
    ENGINES,
    CompileEngine,
    FusedEngine,
    GenerateEngine,
    GraphEngine,
    LoopEngine,
    StaticEngine,
    default_engine,
)
from runners.errors import Unsupported
from runners.families.inference import perplexity
from runners.models import build as model_mod
from runners.models import catalog
from runners.techniques.quality import calibration_batches
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401


@pytest.fixture(scope="module")
def tiny() -> model_mod.BuiltModel:
    return model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)


def _ids(batch: int, length: int, seed: int = 1, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_engines_are_registered_by_name() -> None:
    assert ENGINES == {"loop": LoopEngine, "eager": GenerateEngine, "static": StaticEngine,
                       "graph": GraphEngine, "compile": CompileEngine, "fused": FusedEngine}
    assert (default_engine("cpu"), default_engine("cuda:0")) == ("loop", "fused")


def test_own_loops_decode_what_generate_decodes(tiny: model_mod.BuiltModel) -> None:
    ids = _ids(2, 16)
    outs = {}
    for name in ("loop", "static", "eager"):
        timing, outs[name] = ENGINES[name](tiny.model, 12, None, pad_token_id=258)(ids)
        assert 0 < timing.ttft_s <= timing.latency_s
        assert outs[name].shape == (2, 12)
    assert torch.equal(outs["loop"], outs["eager"]) and torch.equal(outs["static"], outs["eager"])


def test_static_engine_reuses_its_cache_across_requests(tiny: model_mod.BuiltModel) -> None:
    engine = StaticEngine(tiny.model, 6, None)
    a, b = _ids(1, 10, seed=2), _ids(1, 10, seed=3)
    _, first = engine(a)
    cache = engine._cache
    _, other = engine(b)
    _, again = engine(a)
    assert engine._cache is cache  # one allocation for one request shape
    assert torch.equal(first, again) and torch.equal(first, LoopEngine(tiny.model, 6, None)(a)[1])
    assert torch.equal(other, LoopEngine(tiny.model, 6, None)(b)[1])
    _, wider = engine(_ids(3, 12))  # a new shape gets a new cache
    assert wider.shape == (3, 6) and engine._cache is not cache


def test_prefill_alone_gives_the_first_token(tiny: model_mod.BuiltModel) -> None:
    ids = _ids(2, 16)
    _, full = LoopEngine(tiny.model, 4, None)(ids)
    for name in ("loop", "static", "eager"):
        assert torch.equal(ENGINES[name](tiny.model, 4, None).prefill(ids), full[:, :1])


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
        for engine in (LoopEngine, StaticEngine):
            _, out = engine(model, 5, None)(ids)
            assert out.tolist() == [[257] * 5]
    finally:
        handle.remove()


def test_graph_engine_needs_cuda(tiny: model_mod.BuiltModel) -> None:
    with pytest.raises(Unsupported, match="needs a CUDA device"):
        GraphEngine(tiny.model, 4, None).prepare(_ids(1, 4))


def test_engines_describe_what_ran(tiny: model_mod.BuiltModel) -> None:
    assert LoopEngine(tiny.model, 4, None).describe()["kv_cache"] == "dynamic"
    detail = StaticEngine(tiny.model, 4, None).describe()
    assert (detail["engine"], detail["kv_cache"], detail["cuda_graph"]) == ("static", "static",
                                                                            False)
    assert GenerateEngine(tiny.model, 4, None).describe()["decode"] == "generate()"


def test_static_engine_on_real_weights(smollm2_cache: Path) -> None:  # noqa: F811
    card = catalog.model_card(MODEL)
    built = model_mod.load(card, torch.float32, "cpu", 0)
    tok = model_mod.tokenizer_for(card)
    ids = torch.tensor([tok.encode("The lighthouse keeper climbed the hundred steps")])
    _, loop = LoopEngine(built.model, 6, None)(ids)
    _, static = StaticEngine(built.model, 6, None)(ids)
    assert torch.equal(loop, static)
    assert len(set(loop[0].tolist())) > 1  # real text, not one repeated token


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


def test_calibration_batches_come_from_the_pool() -> None:
    batches = calibration_batches(tuple(range(1000)), 600, 256, "cpu")
    assert [b.shape for b in batches] == [(1, 256), (1, 256), (1, 88)]
    assert batches[0][0, 0] == 0 and batches[-1][0, -1] == 599


def test_compile_modes_exclude_inductor_cudagraphs(tiny: model_mod.BuiltModel) -> None:
    assert CompileEngine(tiny.model, 4, None).mode == "default"
    with pytest.raises(ValueError, match="reduce-overhead"):
        CompileEngine(tiny.model, 4, None, mode="reduce-overhead")
