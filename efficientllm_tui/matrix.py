"""The launch matrix: techniques grouped as the paper groups them, models, and why a pair
cannot run (shown, never hidden)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import efficientllm_data

from runners import params

FAMILY_ORDER = ("inference", "finetuning", "pretraining")
GROUP_TITLES: dict[str, str] = {
    "bit_width": "bit-width",
    "peft": "PEFT",
    "attention": "attention",
    "positional_encoding": "pos-enc",
    "moe": "MoE",
    "attention_free": "attn-free",
}
FAMILY_SHORT = {"inference": "infer", "finetuning": "finetune", "pretraining": "pretrain"}


@dataclass(frozen=True)
class Group:
    """One comparison group of one family, with its techniques in catalog order."""

    family: str
    group: str
    techniques: tuple[dict[str, Any], ...]

    @property
    def title(self) -> str:
        family = FAMILY_SHORT.get(self.family, self.family)
        return f"{family}/{GROUP_TITLES.get(self.group, self.group)}"


def groups(catalog: dict[str, Any] | None = None) -> list[Group]:
    """Techniques grouped by family then group, in catalog order (the shipped catalog unless
    another is given)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in (catalog or efficientllm_data.catalog())["techniques"]:
        out.setdefault((t["family"], t["group"]), []).append(t)
    keys = sorted(out, key=lambda k: FAMILY_ORDER.index(k[0]) if k[0] in FAMILY_ORDER else 9)
    return [Group(f, g, tuple(out[(f, g)])) for f, g in keys]


def models(catalog: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Model cards, available ones first (catalog order within each)."""
    cards = list((catalog or efficientllm_data.catalog())["models"])
    return [m for m in cards if m.get("available")] + [m for m in cards if not m.get("available")]


def model_reason(card: dict[str, Any]) -> str | None:
    """Why a model cannot be used now, or None."""
    if card.get("available"):
        return None
    if card.get("requires"):
        return f"needs real weights from the {card['requires']!r} package, not loaded yet"
    return "not available yet"


def technique_reason(tech: dict[str, Any]) -> str | None:
    """Why a technique cannot run now, or None."""
    return None if tech.get("available") else "not implemented yet"


VISION_TASKS = params.VISION_TASKS
"""What a vision-language model runs (the Launch form's `vlm task`)."""


def vision_values(tech: dict[str, Any], card: dict[str, Any], task: str) -> dict[str, str]:
    """The `--set` values a pair runs with because its model is a vision-language model:
    `task` for inference, `vlm_task` (the labels trained on) for fine-tuning; none for a
    text model."""
    if not params.is_vision(card):
        return {}
    return {"inference": {"task": task}, "finetuning": {"vlm_task": task}}.get(
        tech.get("family", ""), {})


def pair_reason(
    tech: dict[str, Any],
    card: dict[str, Any],
    *,
    seq_len: int | None = None,
    new_tokens: int | None = None,
    values: dict[str, Any] | None = None,
) -> str | None:
    """Why this technique x model pair cannot run (with the form's lengths), or None.

    Availability is the catalog's; what the model card rules out (real weights for
    pretraining, too few positions, ...) is the runners' rule, runners.params.pair_problem,
    which the launcher and the runner apply too.
    """
    reason = technique_reason(tech)
    if reason:
        return f"{tech['id']}: {reason}"
    reason = model_reason(card)
    if reason:
        return f"{card['id']}: {reason}"
    # A length the form does not give yet counts as the shortest a run can have.
    return params.pair_problem(tech["family"], tech["id"], card,
                               seq_len=2 if seq_len is None else seq_len,
                               new_tokens=0 if new_tokens is None else new_tokens,
                               values=values)


def estimate_params(card: dict[str, Any]) -> int | None:
    """Rough parameter count of a decoder card (embeddings + attention + MLP), for grouping."""
    try:
        h, layers = int(card["hidden_size"]), int(card["num_layers"])
        heads, kv = int(card["num_heads"]), int(card["num_kv_heads"])
        inter, vocab = int(card["intermediate_size"]), int(card["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = h // max(1, heads)
    attn = h * h * 2 + 2 * h * kv * head_dim
    mlp = 3 * h * inter
    emb = vocab * h * (1 if card.get("tie_embeddings") else 2)
    return layers * (attn + mlp) + emb
