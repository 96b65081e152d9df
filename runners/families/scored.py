"""Task scores inside a run: the quality tasks scored in a phase and energy window of their
own (so they never enter the cost metrics), and the base model's scores that fine-tuning
compares an adapted model to, cached per model and task version.

Shared by the inference and fine-tuning families; lm-eval itself is reached only through
runners.techniques.scoring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profiling.window import WindowMeter
from runners.families.base import RunContext
from runners.protocol import RANDOM_WEIGHTS_NOTE, Event, Metric
from runners.techniques import scoring
from runners.techniques import tasks as suite

QUALITY_BATCH = 32
"""lm-eval batch size for the quality tasks (log-likelihood requests of a few tokens)."""
BYTE_TOKENIZER_NOTE = ("unsupported: lm-eval needs the model's transformers tokenizer (this "
                       "model has the byte one)")
CACHE_VERSION = 1
"""Bumped when what a cached base score means changes; older entries are then ignored."""


def score_in_window(ctx: RunContext, model: Any, tokenizer: Any, names: Sequence[str],
                    phase: str, *, items: int, meter: WindowMeter | None = None
                    ) -> tuple[scoring.TaskScore, ...]:
    """`names` scored on `model` (lm-eval) in phase `phase`, inside a window of that name
    when `meter` is given; a task that could not be scored is logged with its reason.

    `tokenizer` is the runner's tokenizer; only one that wraps a transformers tokenizer
    (its `transformers` attribute) can feed lm-eval.
    """
    ctx.phase(phase, tasks=list(names), items=items)
    tok = getattr(tokenizer, "transformers", None)
    if tok is None:
        return scoring.unscored(names, BYTE_TOKENIZER_NOTE)
    if meter is not None:
        meter.begin(phase)
    scores = scoring.score(model, tok, names, ctx.run_dir / "quality", items=items,
                           batch_size=QUALITY_BATCH)
    if meter is not None:
        ctx.emit(Event.window(**meter.end(phase).to_dict()))
    for s in scores:
        if s.note:
            ctx.emit(Event.log(f"{phase}: {s.task}: {s.note}"))
    return scores


# -- the base model's scores, cached ---------------------------------------------------------


def cache_dir(home: Path) -> Path:
    """Where base-model scores are kept: `<home>/quality_cache/`."""
    return home / "quality_cache"


def cache_key(task: str, *, model: str, weights_source: str | None, dtype: str,
              device_type: str, items: int) -> str:
    """The file name of one task's cached base score: a hash of everything that decides the
    score (model and the exact weights file, dtype, device type, items, the task's version,
    lm-eval's version)."""
    identity = {"cache": CACHE_VERSION, "task": task, "model": model,
                "weights": weights_source, "dtype": dtype, "device": device_type,
                "items": items, "lm_eval": _lm_eval_version(),
                "suite": suite.SUITE_VERSION if task in suite.TASKS else None}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return f"{task}-{digest}.json"


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def read_cached(directory: Path, key: str) -> scoring.TaskScore | None:
    """The cached score under `key`; None when absent or unreadable (it is then rescored)."""
    try:
        doc = json.loads((directory / key).read_text(encoding="utf-8"))
        return scoring.TaskScore(task=str(doc["task"]), acc=float(doc["acc"]),
                                 stderr=None if doc["stderr"] is None else float(doc["stderr"]),
                                 n=None if doc["n"] is None else int(doc["n"]),
                                 version=None if doc["version"] is None else str(doc["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(directory: Path, key: str, score: scoring.TaskScore) -> None:
    """Keep a scored task (never a failed one: its reason may not hold next time); written
    whole or not at all."""
    if score.acc is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"task": score.task, "acc": score.acc, "stderr": score.stderr, "n": score.n,
           "version": score.version}
    tmp = directory / f".{key}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, directory / key)


def base_scores(ctx: RunContext, model: Any, tokenizer: Any, names: Sequence[str], *,
                items: int, identity: dict[str, Any], meter: WindowMeter | None = None
                ) -> tuple[tuple[scoring.TaskScore, ...], list[str]]:
    """The base model's score on each of `names`: from the cache where it holds one, the
    rest scored now (phase and window `base_quality`) and cached. Also the tasks that came
    from the cache.

    `identity` holds cache_key's keyword arguments but `items`.
    """
    directory = cache_dir(ctx.home)
    keys = {t: cache_key(t, items=items, **identity) for t in names}
    cached = {t: s for t in names if (s := read_cached(directory, keys[t])) is not None}
    missing = [t for t in names if t not in cached]
    fresh: dict[str, scoring.TaskScore] = {}
    if missing:
        for s in score_in_window(ctx, model, tokenizer, missing, "base_quality", items=items,
                                 meter=meter):
            fresh[s.task] = s
            write_cached(directory, keys[s.task], s)
    return tuple(cached.get(t) or fresh[t] for t in names), sorted(cached)


def adapted_metrics(tasks: Sequence[str], task_scores: Sequence[scoring.TaskScore],
                    base: tuple[tuple[scoring.TaskScore, ...], list[str]] | None, *,
                    random_weights: bool) -> list[Metric]:
    """Fine-tuning's quality metrics: acc_<task> and `quality` of the adapted model, and
    `base_quality` of the model it started from; on random weights all NULL with the
    reason."""
    if random_weights:
        task_scores = scoring.unscored(tasks, RANDOM_WEIGHTS_NOTE)
    out = scoring.metrics(task_scores, RANDOM_WEIGHTS_NOTE if random_weights else None)
    base_mean = scoring.mean(base[0]) if base else None
    why = None
    if base_mean is None:
        why = RANDOM_WEIGHTS_NOTE if random_weights else "; ".join(dict.fromkeys(
            s.note for s in (base[0] if base else ()) if s.note)) or None
    out.append(Metric("base_quality", base_mean, "fraction", scoring.SOURCE, why))
    return out
