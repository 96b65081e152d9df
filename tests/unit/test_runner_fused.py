"""The lean decode path (runners.engines.fused) and the `fused` engine on the CPU: the same logits
as
the transformers forward step by step, the same tokens as the own loop, weights shared (not
copied) after fusing, quantized projections called unfused, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from runners.engines.decode import ENGINES, FusedEngine, LoopEngine, cache_kwarg, default_chain
from runners.engines.fused import LeanDecoder, supported
from runners.errors import Unsupported
from runners.models import build as model_mod
from runners.models import catalog
from runners.techniques import quantize as quant
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401


def _tiny() -> model_mod.BuiltModel:
    return model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_lean_steps_match_the_transformers_forward_logits() -> None:
    model = _tiny().model
    prompt, feed = _ids(2, 16, 1), _ids(2, 8, 2)
    lean = LeanDecoder(model, batch=2, max_len=24)
    lean.keep_logits = True
    cache = DynamicCache()
    with torch.no_grad():
        first = lean.prefill(prompt)
        ref = model(input_ids=prompt, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]
        assert lean.logits is not None
        torch.testing.assert_close(lean.logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(first, ref.argmax(-1, keepdim=True))
        assert int(lean.pos) == 16
        for j in range(feed.shape[1]):  # teacher-forced: every position of the cache is used
            lean.tok.copy_(feed[:, j:j + 1])
            lean.step()
            ref = model(input_ids=feed[:, j:j + 1], use_cache=True,
                        **{cache_kwarg(model): cache}).logits[:, -1]
            torch.testing.assert_close(lean.logits, ref, atol=1e-5, rtol=1e-5)
        assert int(lean.pos) == 24


def test_fusing_shares_the_weights_instead_of_copying_them() -> None:
    built = _tiny()
    model = built.model
    attn = model.model.layers[0].self_attn
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = _ids(1, 8, 3)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    lean = LeanDecoder(model, batch=1, max_len=16)
    layer = lean.layers[0]
    assert lean.fused and isinstance(layer.qkv, torch.Tensor)
    # q, k and v are now views of the one fused tensor, with their values unchanged
    assert attn.q_proj.weight.data_ptr() == layer.qkv.data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == layer.qkv.untyped_storage().data_ptr()
    assert layer.qkv_bias is not None  # qwen2 projects q, k and v with biases
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert model_mod.measure(model) == built.size  # no second copy counted or held
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_fused_engine_decodes_what_the_loop_decodes() -> None:
    model = _tiny().model
    engine = FusedEngine(model, 10, None, mode="none")
    for seed in (4, 5):
        ids = _ids(2, 12, seed)
        _, loop = LoopEngine(model, 10, None)(ids)
        timing, fused = engine(ids)
        assert torch.equal(fused, loop)
        assert 0 < timing.ttft_s <= timing.latency_s
    lean = engine._lean
    _, again = engine(_ids(2, 12, 5))
    assert engine._lean is lean and torch.equal(again, fused)  # one cache per request shape
    engine(_ids(1, 7, 6))
    assert engine._lean is not lean  # a new shape gets its own cache, on the same weights
    assert engine._lean.layers[0].qkv is lean.layers[0].qkv
    first = engine.prefill(_ids(2, 12, 4))
    assert torch.equal(first[:, 0], LoopEngine(model, 1, None)(_ids(2, 12, 4))[1][:, 0])


def test_fused_engine_describes_what_ran() -> None:
    engine = FusedEngine(_tiny().model, 4, None, mode="default")
    engine(_ids(1, 8, 7))
    info = engine.describe()
    # no compilation and no graph on the CPU, and the description says so
    assert info["engine"] == "fused" and info["cuda_graph"] is False
    assert (info["compiled"], info["compile_mode"], info["compile_s"]) == (False, "none", None)
    assert info["fused_projections"] is True and info["decode"] == "lean decode step"
    with pytest.raises(ValueError, match="compile mode"):
        FusedEngine(_tiny().model, 4, None, mode="turbo")


def test_quantized_projections_run_unfused_through_their_own_modules() -> None:
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int8"], quant.DEFAULT_EXCLUDE)
    ids = _ids(2, 12, 8)
    _, loop = LoopEngine(built.model, 8, None)(ids)
    engine = FusedEngine(built.model, 8, None)
    _, fused = engine(ids)
    assert engine.describe()["fused_projections"] is False
    assert torch.equal(fused, loop)


def test_models_outside_the_llama_family_are_refused_clearly() -> None:
    model = _tiny().model
    model.config.model_type = "phi3"
    assert "not 'phi3'" in (supported(model, 16) or "")
    with pytest.raises(Unsupported, match="engine 'fused'.*phi3"):
        LeanDecoder(model, 1, 16)
    model.config.model_type = "mistral"
    model.config.sliding_window = 8
    assert "sliding window of 8" in (supported(model, 16) or "")
    assert supported(model, 8) is None


def test_engine_registry_and_default_chains() -> None:
    assert ENGINES["fused"] is FusedEngine
    assert default_chain("cuda:0") == ("fused", "graph", "loop")
    assert default_chain("cpu") == ("loop",)


def test_fused_engine_on_real_llama_weights(smollm2_cache: Path) -> None:  # noqa: F811
    card = catalog.model_card(MODEL)
    built = model_mod.load(card, torch.float32, "cpu", 0)
    tok = model_mod.tokenizer_for(card)
    ids = torch.tensor([tok.encode("The lighthouse keeper climbed the hundred steps")])
    _, loop = LoopEngine(built.model, 8, None)(ids)
    engine = FusedEngine(built.model, 8, None)
    _, fused = engine(ids)
    assert engine.describe()["fused_projections"] is True
    assert torch.equal(loop, fused)
    assert len(set(loop[0].tolist())) > 1  # real text, not one repeated token


def test_torchao_weights_in_plain_linears_are_not_fused() -> None:
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int8-ao"], quant.DEFAULT_EXCLUDE)
    attn = built.model.model.layers[0].self_attn
    assert type(attn.q_proj) is torch.nn.Linear  # torchao swaps the tensor, not the module
    ids = _ids(2, 12, 9)
    _, loop = LoopEngine(built.model, 8, None)(ids)
    engine = FusedEngine(built.model, 8, None)
    _, fused = engine(ids)
    assert engine.describe()["fused_projections"] is False
    assert torch.equal(fused, loop)


def test_compiled_step_compiles_the_attention_frame_once_for_all_layers() -> None:
    """The decode kernel's launch breaks Dynamo's graph, so the attention is its own frame;
    it must be reused by every layer (a per-layer int argument recompiled it per layer
    until the recompile limit, leaving the later layers uncompiled on the GPU)."""
    import torch._dynamo as dynamo

    model = _tiny().model
    lean = LeanDecoder(model, batch=1, max_len=16)
    assert len(lean.layers) == 4

    def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, pos: torch.Tensor,
               scale: float, out: torch.Tensor) -> torch.Tensor:
        dynamo.graph_break()  # as the Triton launch does
        kc.add_(1.0)  # marks which layer's cache it was given
        return out.zero_()

    lean._kernel = kernel
    dynamo.reset()
    with torch.no_grad():
        lean.prefill(_ids(1, 4, 0))
        before = [c.clone() for c in lean.k_cache]
        step = torch.compile(lean.step, backend="eager", dynamic=False)
        with dynamo.config.patch(error_on_recompile=True):
            step()
            step()
    dynamo.reset()
    # every layer's attention ran on its own cache, twice, and nothing recompiled
    for c, b in zip(lean.k_cache, before, strict=True):
        torch.testing.assert_close(c - b, torch.full_like(c, 2.0))
