"""Models from cards: sizes without allocating, and seeded random builds."""

from __future__ import annotations

import pytest
import torch

from runners.errors import OutOfMemory
from runners.models import build as model_mod
from runners.models import catalog


def _tiny_params() -> int:
    # Hand count for the tiny card: hidden 256, 4 layers, 4 heads of 64, 2 KV heads,
    # FFN 1024, vocab 260, tied embeddings. Qwen2 has q/k/v biases, no o_proj bias.
    h, kv, ffn, vocab, layers = 256, 2 * 64, 1024, 260, 4
    attn = (h * h + h) + 2 * (h * kv + kv) + h * h
    mlp = 3 * h * ffn
    norms = 2 * h
    return vocab * h + layers * (attn + mlp + norms) + h  # + the final norm


def test_tiny_param_count_by_hand() -> None:
    size = model_mod.size_on_meta(catalog.model_card("tiny"))
    assert size.total_params == _tiny_params() == 4_003_072


def test_built_tiny_matches_meta_size() -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)
    meta = model_mod.size_on_meta(catalog.model_card("tiny"), torch.float32)
    assert built.size == meta
    # weights in fp32 plus two float32 rotary buffers of head_dim / 2 each
    assert built.size.weight_bytes == 4 * _tiny_params() + 2 * 32 * 4
    assert (built.weights, built.dtype, built.init_dtype) == ("random", "float32", "float32")
    assert not built.model.training
    assert not any(p.requires_grad for p in built.model.parameters())


@pytest.mark.parametrize(("model_id", "params"), [
    ("qwen2.5-0.5b", 494_032_768),     # the published Qwen2.5-0.5B count
    ("llama-3.2-1b", 1_235_814_400),
    ("mistral-7b", 7_241_732_096),
    ("phi-3.5-mini", 3_821_079_552),
])
def test_shapes_size_like_the_real_models(model_id: str, params: int) -> None:
    size = model_mod.size_on_meta(catalog.model_card(model_id), torch.bfloat16)
    assert size.total_params == params
    assert 2 * params <= size.weight_bytes < 2 * params + 1_000_000


def test_same_seed_same_weights_and_bf16_is_rounded_fp32() -> None:
    card = catalog.model_card("tiny")
    a = model_mod.build(card, torch.float32, "cpu", seed=3).model.state_dict()
    b = model_mod.build(card, torch.float32, "cpu", seed=3).model.state_dict()
    c = model_mod.build(card, torch.float32, "cpu", seed=4).model.state_dict()
    half = model_mod.build(card, torch.bfloat16, "cpu", seed=3)
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[w], b[w])
    assert not torch.equal(a[w], c[w])
    assert half.init_dtype == "float32" and half.dtype == "bfloat16"
    assert torch.equal(half.model.state_dict()[w], a[w].to(torch.bfloat16))
    assert half.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_too_big_fails_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "free_bytes", lambda device: 10 * 2**20)
    with pytest.raises(OutOfMemory, match="needs 0.01 GiB"):
        model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)


def test_load_of_a_random_card_is_build() -> None:
    card = catalog.model_card("tiny")
    a = model_mod.load(card, torch.bfloat16, "cpu", 3)
    b = model_mod.build(card, torch.bfloat16, "cpu", 3)
    w = "model.layers.1.self_attn.q_proj.weight"
    assert a.size == b.size and torch.equal(a.model.state_dict()[w], b.model.state_dict()[w])
    assert a.source is None and a.weights == "random"


def test_cast_and_cast_temporarily() -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=3)
    w = built.model.model.layers[0].mlp.up_proj.weight
    original = w.data.clone()
    with model_mod.cast_temporarily(built.model, torch.bfloat16) as size:
        assert w.dtype == torch.bfloat16
        assert size.weight_bytes == 2 * _tiny_params() + 2 * 32 * 4  # rotary buffers stay fp32
    assert w.dtype == torch.float32 and torch.equal(w.data, original)
    half = model_mod.cast(built, torch.bfloat16)
    assert half.dtype == "bfloat16" and half.size.weight_bytes == 2 * _tiny_params() + 256
    assert built.model.lm_head.weight is built.model.model.embed_tokens.weight  # still tied
    assert torch.equal(w.data, original.to(torch.bfloat16))


def test_measure_counts_quantized_storage() -> None:
    from runners.techniques import quantize as quant

    built = model_mod.build(catalog.model_card("tiny"), torch.bfloat16, "cpu", seed=0)
    quant.quantize(built.model, quant.QUANTIZATIONS["int8"], quant.DEFAULT_EXCLUDE)
    size = model_mod.measure(built.model)
    assert size.total_params == _tiny_params()
    assert size.weight_bytes < built.size.weight_bytes * 0.6


def test_real_weights_too_big_fail_before_loading(tmp_path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
                                                  ) -> None:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0)
    built.model.save_pretrained(tmp_path)
    monkeypatch.setattr(model_mod, "free_bytes", lambda device: 4 * 2**20)
    with pytest.raises(OutOfMemory, match="needs about 0.01 GiB"):
        model_mod.load(catalog.model_card(str(tmp_path)), torch.float32, "cpu", 0)
