"""The metrics a vision-language run adds to the text path's: the vision encoder's share of
TTFT, image tokens per request, images/s, and the task's quality (VQA exact match, caption
BLEU) with MCR over it. Arithmetic over what the run measured, so every formula is
unit-testable; definitions in docs/metrics.md ("Vision-language").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from profiling import metrics as pm
from profiling.window import WindowResult
from runners.protocol import RANDOM_WEIGHTS_NOTE, Metric, explain_missing

if TYPE_CHECKING:
    from runners.data.images import Item
    from runners.techniques.quality import Reference

SOURCE = "runner"
NOT_VQA_NOTE = "captioning run: scored by caption_bleu (vqa_accuracy is the vqa task's)"
NOT_CAPTION_NOTE = "vqa run: scored by vqa_accuracy (caption_bleu is the captioning task's)"
PPL_NOTE = "vision-language task: quality is vqa_accuracy / caption_bleu, not perplexity"
EXAMPLES = 5
"""Predictions kept in the run's info (the first items)."""


@dataclass(frozen=True, slots=True)
class Scores:
    """A model's quality on the task's items."""

    task: str
    accuracy: float | None
    """VQA exact match over the items with an answer."""
    bleu: float | None
    """Corpus BLEU (0-100, sacrebleu) of the captions against the references."""
    n: int | None
    """Items scored."""
    examples: tuple[tuple[str, str, str], ...] = ()
    """(prompt, prediction, reference) of the first items."""
    signature: str | None = None
    """sacrebleu's signature of the BLEU settings."""

    @property
    def quality(self) -> float | None:
        """The run's `quality` (MCR's): accuracy for vqa, BLEU / 100 for captioning."""
        if self.task == "vqa":
            return self.accuracy
        return None if self.bleu is None else self.bleu / 100.0

    @classmethod
    def unscored(cls, task: str) -> Scores:
        return cls(task, None, None, None)


def reference_of(item: Item, task: str) -> str | None:
    """The item's reference under `task`: the VQA answer or the caption."""
    return item.answer if task == "vqa" else item.caption


def score(task: str, items: Sequence[Item], predictions: Sequence[str]) -> Scores:
    """Exact match (vqa) or corpus BLEU (captioning) of `predictions` against the items'
    references; items without a reference are left out."""
    from runners.data.images import exact_match, prompt

    pairs = [(i, p, r) for i, p in zip(items, predictions, strict=True)
             if (r := reference_of(i, task)) is not None]
    examples = tuple((prompt(i, task), p, r) for i, p, r in pairs[:EXAMPLES])
    if not pairs:
        return Scores.unscored(task)
    if task == "vqa":
        hits = sum(exact_match(p, r) for _, p, r in pairs)
        return Scores(task, hits / len(pairs), None, len(pairs), examples)
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True, lowercase=True)
    result = bleu.corpus_score([p for _, p, _ in pairs], [[r for _, _, r in pairs]])
    return Scores(task, None, float(result.score), len(pairs), examples,
                  str(bleu.get_signature()))


def image_token_id(card: Any, prompter: Any) -> int:
    """The id image tokens have in the prompt (the processor's when it has one)."""
    proc = getattr(prompter, "processor", None)
    token = getattr(proc, "image_token_id", None) if proc is not None else None
    return int(token if token is not None else card.vision.image_token_id)


def part_sizes(model: Any, arch: str) -> dict[str, int]:
    """Parameters of the vision tower, the projector and the language model."""
    from runners.models import vlm

    sizes = {}
    projector = {id(p) for p in vlm.part(model, arch, "projector").parameters()}
    for name in ("vision", "projector", "language"):
        params = vlm.part(model, arch, name).parameters()
        if name == "vision":
            params = (p for p in params if id(p) not in projector)
        sizes[name] = sum(p.numel() for p in params)
    return sizes


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return math.fsum(xs) / len(xs) if xs else None


def vision_metrics(text: Sequence[Metric], timings: Sequence[Any], window: WindowResult, *,
                   batch_size: int, image_tokens: int, task: str, scores: Scores,
                   reference: Reference | None, weight_bytes: int,
                   quality_note: str | None) -> list[Metric]:
    """The text path's metrics (perplexity NULL with the reason, MCR and `quality` over the
    task's score) plus the vision-language ones."""
    vision = _mean([t.vision_s for t in timings])
    ttft = _mean([t.ttft_s for t in timings])
    share = vision / ttft if vision is not None and ttft else None
    images_per_s = pm.it_tokens_per_s(len(timings) * batch_size, window.elapsed_s)
    quality = scores.quality
    ref_quality = reference.task_quality if reference is not None else None
    ref_bytes = reference.weight_bytes if reference is not None else None
    mcr = pm.mcr(ref_bytes, weight_bytes, ref_quality, quality)
    unscored = quality_note or RANDOM_WEIGHTS_NOTE
    out: list[Metric] = []
    for m in text:
        if m.name in ("eval_ppl", "reference_ppl"):
            m = Metric(m.name, None, m.unit, "none", quality_note or PPL_NOTE)
        elif m.name == "mcr":
            m = (Metric("mcr", mcr, "ratio", SOURCE) if mcr is not None else
                 Metric.missing("mcr", "ratio", unscored if quality is None else
                                "no reference quality to compare with (none, or 0)"))
        out.append(m)
    notes = {"vision_encode_s": "the vision tower's hooks did not fire",
             "vqa_accuracy": unscored if task == "vqa" else NOT_VQA_NOTE,
             "caption_bleu": unscored if task == "captioning" else NOT_CAPTION_NOTE,
             "quality": unscored}
    return out + list(explain_missing([
        Metric("vision_encode_s", vision, "s", SOURCE),
        Metric("vision_ttft_fraction", share, "fraction", SOURCE),
        Metric("image_tokens_per_request", float(image_tokens), "tokens", SOURCE),
        Metric("images_per_s", images_per_s, "images/s", SOURCE),
        Metric("vqa_accuracy", scores.accuracy if task == "vqa" else None, "fraction",
               SOURCE),
        Metric("caption_bleu", scores.bleu if task == "captioning" else None, "BLEU",
               SOURCE),
        Metric("quality", quality, "fraction", SOURCE),
    ], notes))
