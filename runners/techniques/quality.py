"""Quality on held-out text: perplexity, and the reference a compressed model is scored
against for MCR (DESIGN.md section 6: quality = 1 / perplexity on the eval text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class Reference:
    """The uncompressed model MCR compares against: same weights, one float dtype."""

    dtype: str
    """torch dtype name of the reference (`bfloat16` or `float32`)."""
    weight_bytes: int
    """Bytes the reference model's tensors store."""
    ppl: float | None
    """Its perplexity on the same held-out text; None when not finite."""
    task_quality: float | None = None
    """Its mean accuracy on the run's quality tasks; None when no task was scored."""


def perplexity(model: Any, ids: Sequence[int], device: str, chunk_tokens: int) -> float | None:
    """exp(mean next-token NLL) of `ids`, scored in chunks of at most `chunk_tokens`.

    Each chunk predicts its own tokens 2..n; chunks are weighted by their predictions.
    None when fewer than two ids (nothing to predict) or the loss is not finite.
    """
    if len(ids) < 2:
        return None
    nll_sum = 0.0
    count = 0
    with torch.no_grad():
        for start in range(0, len(ids), chunk_tokens):
            chunk = ids[start:start + chunk_tokens]
            if len(chunk) < 2:
                continue
            x = torch.tensor([list(chunk)], dtype=torch.long, device=device)
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            nll_sum += float(loss) * (len(chunk) - 1)
            count += len(chunk) - 1
    if count == 0:
        return None
    mean = nll_sum / count
    if not math.isfinite(mean) or mean > 700:  # exp overflows a float beyond ~709
        return None
    return math.exp(mean)


def calibration_batches(pool: Sequence[int], tokens: int, chunk_tokens: int,
                        device: str) -> list[torch.Tensor]:
    """Consecutive windows of the prompt pool (never the held-out slice), `tokens` in all,
    each [1, <= chunk_tokens], for activation calibration."""
    take = list(pool[:max(0, tokens)])
    return [torch.tensor([take[i:i + chunk_tokens]], dtype=torch.long, device=device)
            for i in range(0, len(take), chunk_tokens) if len(take[i:i + chunk_tokens]) > 1]
