"""Fine-tuning's quality phases: the base model's task scores (cached, before any adapter
touches it), the adapted model's scores after training, and `efficientllm eval`'s re-score of
what a stored run trained. Task scoring itself is runners.families.scored's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from profiling.window import WindowMeter
from runners.errors import Unsupported
from runners.families import scored
from runners.families.base import RunContext
from runners.models import build as model_mod
from runners.protocol import RunResult
from runners.techniques import peft_methods, scoring

BaseScores = tuple[tuple[scoring.TaskScore, ...], list[str]]
"""The base model's scores and the tasks whose score came from the cache."""


def prompt_learning(prepared: peft_methods.Prepared) -> bool:
    """Whether the method adds virtual tokens (its peft wrapper must run the forward)."""
    config = getattr(prepared.model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def base_quality(ctx: RunContext, model_id: str, built: model_mod.BuiltModel, tokenizer: Any,
                 tasks: Sequence[str], *, items: int, device: str,
                 meter: WindowMeter) -> BaseScores | None:
    """The base model's scores on the run's tasks, before any adapter or quantization
    touches it: cached per model, weights, dtype, device type, items and task version, so
    the arms of a PEFT comparison score it once. None when there is nothing to score."""
    if not tasks or built.weights == "random":
        return None
    built.model.eval()
    identity = {"model": model_id, "weights_source": built.source, "dtype": built.dtype,
                "device_type": device.split(":")[0]}
    return scored.base_scores(ctx, built.model, tokenizer, tasks, items=items,
                              identity=identity, meter=meter)


def score_adapted(ctx: RunContext, prepared: peft_methods.Prepared, tokenizer: Any,
                  tasks: Sequence[str], *, items: int, device: str, amp: bool,
                  meter: WindowMeter) -> tuple[scoring.TaskScore, ...]:
    """The adapted model as trained (peft's wrapper for prompt learning, so its virtual
    tokens take part) scored in a `quality` window, under the run's autocast."""
    model = prepared.model if prompt_learning(prepared) else prepared.lm
    model.eval()
    with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=amp):
        return scored.score_in_window(ctx, model, tokenizer, tasks, "quality", items=items,
                                      meter=meter)


def score_only(ctx: RunContext, prepared: peft_methods.Prepared, built: model_mod.BuiltModel,
               tokenizer: Any, tasks: Sequence[str], base: BaseScores | None, *,
               trained: Path, items: int, device: str, amp: bool,
               meter: WindowMeter) -> RunResult:
    """`efficientllm eval`: what a stored run trained (`trained`, its RUN_DIR/adapter/),
    restored into a model prepared the same way and scored; no training, no cost measured."""
    spec = ctx.spec
    if built.weights == "random":
        raise Unsupported(f"{spec.model} has random weights: no quality to score")
    ctx.phase("restore", path=str(trained))
    files = peft_methods.restore(prepared, trained)
    scores = score_adapted(ctx, prepared, tokenizer, tasks, items=items, device=device,
                           amp=amp, meter=meter)
    info = {"score_of": spec.params.get("score_of"), "restored_files": files,
            "device": device, "weights_source": built.source, **info_of(scores, base)}
    return RunResult(run_id=spec.run_id, status="ok", info=info, metrics=tuple(
        scored.adapted_metrics(tasks, scores, base, random_weights=False)))


def info_of(scores: Sequence[scoring.TaskScore], base: BaseScores | None) -> dict[str, Any]:
    """The run info's quality part: both per-task tables and the cached base tasks."""
    return {"quality_tasks": scoring.info(scores),
            "base_quality_tasks": scoring.info(base[0]) if base else {},
            "base_quality_cached": base[1] if base else []}
