"""What the launcher checks before a runner starts: a spec's `--set` parameters, its model x
technique pair and the head of its dataset, in one call, `validate_spec`.

Why here and not only in the runner: a runner takes seconds to import torch before its own
checks run, and a run it refuses is stored as a failed run. These are the runners' own rules
(runners.params, the dataset readers' record rules), with no torch, so the app (CLI `run`,
`sweep`, the Launch screen) can refuse bad input at once and leave nothing behind. The runner
checks everything again on its side, with what only it knows (the device, installed kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from runners import params
from runners.data import corpus, images, sft, textstream
from runners.errors import BadInput
from runners.protocol import RunSpec

DATASET_CHECKS: dict[str, Callable[[str], None]] = {
    "inference": corpus.check_head, "finetuning": sft.check_head,
    "pretraining": textstream.check_head}
"""Family -> the cheap check of the dataset format that family reads."""


def validate_spec(spec: RunSpec, card: Any) -> dict[str, Any]:
    """The spec's parameters, typed and checked (defaults filled in).

    Args:
        spec: The run to check.
        card: The model's card (runners.models.cards.ModelCard, or a catalog entry as a
            mapping); None skips the pair check (the runner checks it then).

    Raises:
        BadInput: One line naming the first problem: an unknown `--set` key (with the valid
            ones), a value of the wrong type, out of its choices or range, a pair the model
            card rules out, or a dataset that is missing, empty or malformed (with its line).
    """
    values = params.resolve(spec.family, spec.params)
    if card is not None:
        problem = params.pair_problem(spec.family, spec.technique, card, seq_len=spec.seq_len,
                                      new_tokens=spec.new_tokens, values=values)
        if problem:
            raise BadInput(problem)
    if spec.dataset is not None:
        vision = (values.get("task", "decode") != "decode" if spec.family == "inference"
                  else card is not None and params.is_vision(card))
        (images.check_head if vision else DATASET_CHECKS[spec.family])(spec.dataset)
    return values


FIT_FRACTION = 0.9
"""Share of a device's memory the weights may take (runners.models.build checks the same
share of free memory before it allocates; the rest is left for activations and KV)."""
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def weight_dtype(family: str, technique: str, device: str,
                 values: Mapping[str, Any] | None = None) -> str | None:
    """The dtype a run of this pair builds its weights in, or None where the card does not
    say (pretraining builds the technique's own model).

    Float inference techniques are their dtype; quantized ones are built in `--set dtype`
    (auto: bf16 on CUDA, fp32 on CPU) before they are quantized; fine-tuning builds its
    base in `--set precision` (auto the same way). A GPU that lacks bf16 is not known here.
    """
    v = values or {}
    cuda = device.startswith("cuda")
    if family == "inference":
        if technique in params.FLOAT_TECHNIQUES:
            return technique
        chosen = str(v.get("dtype", "auto"))
    elif family == "finetuning":
        chosen = str(v.get("precision", "auto"))
    else:
        return None
    if chosen == "auto":
        return "bf16" if cuda else "fp32"
    return chosen if chosen in _DTYPE_BYTES else None


def card_params(card: Any) -> int | None:
    """Parameters of a decoder card from its shapes (embeddings, attention, MLP), no torch;
    None when the card lacks a shape."""
    try:
        h, layers = int(params._card(card, "hidden_size")), int(params._card(card, "num_layers"))
        heads, kv = int(params._card(card, "num_heads")), int(params._card(card, "num_kv_heads"))
        inter = int(params._card(card, "intermediate_size"))
        vocab = int(params._card(card, "vocab_size"))
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = h // max(1, heads)
    attn = 2 * h * h + 2 * h * kv * head_dim
    tied = bool(params._card(card, "tie_embeddings"))
    n = layers * (attn + 3 * h * inter + 2 * h) + vocab * h * (1 if tied else 2) + h
    vision = params._card(card, "vision")
    if vision is not None:  # a VLM: its ViT (attention + MLP a layer), patch embedding, projector
        v = {k: int(params._card(vision, k) or 1) for k in (
            "hidden_size", "layers", "intermediate_size", "patch_size", "merge")}
        vh = v["hidden_size"]
        n += (v["layers"] * (4 * vh * vh + 2 * vh * v["intermediate_size"])
              + 3 * v["patch_size"] ** 2 * vh + vh * v["merge"] ** 2 * h)
    return n


def weight_bytes(family: str, technique: str, card: Any, device: str,
                 values: Mapping[str, Any] | None = None) -> tuple[int, str] | None:
    """(bytes, dtype) of the weights a run builds before it starts: the least memory the
    pair needs on `device` (activations, KV, gradients and optimizer state come on top);
    None where it cannot be told from the card."""
    dtype = weight_dtype(family, technique, device, values)
    n = card_params(card)
    if dtype is None or n is None:
        return None
    return n * _DTYPE_BYTES[dtype], dtype


def fit_problem(family: str, technique: str, card: Any, device: str, memory_bytes: int,
                values: Mapping[str, Any] | None = None) -> str | None:
    """Why the pair's weights cannot fit a device of `memory_bytes`, or None when they may
    (or the need is unknown): the runner's own check, made before the run is queued."""
    need = weight_bytes(family, technique, card, device, values)
    if need is None or need[0] <= FIT_FRACTION * memory_bytes:
        return None
    gib = 2**30
    return (f"needs at least {need[0] / gib:.1f} GiB of {need[1]} weights; {device} has "
            f"{memory_bytes / gib:.1f} GiB")
