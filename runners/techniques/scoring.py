"""Task accuracy of the runner's own model through lm-evaluation-harness (the `quality`
parameter): the shipped suite (runners.techniques.tasks) or any lm-eval task whose dataset
is already in the Hugging Face cache.

The one module that imports lm_eval. Nothing is downloaded: the hub and datasets are put
offline before lm_eval loads, so a task whose data is not cached fails as `unsupported`
(a note on its metric), never a crash, and the run's cost metrics are kept.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.errors import one_line
from runners.protocol import Metric
from runners.techniques import tasks as suite

SOURCE = "lm-eval"
SUITE = "suite"
"""`--set quality=suite`: every task of the shipped suite."""
OFF = ("", "off", "none")
EVAL_EXTRA_NOTE = ("lm-eval is not installed: pip install 'efficientllm-tui[eval]' "
                   "(lm-eval==0.4.13)")
METRIC_KEYS = ("acc,none", "exact_match,strict-match", "exact_match,flexible-extract",
               "exact_match,none")
"""The score of a task, the first of these its results carry (accuracy, else exact match)."""


@dataclass(frozen=True, slots=True)
class TaskScore:
    """One task's score on one model."""

    task: str
    acc: float | None
    """Accuracy in [0, 1]; None with `note` when the task could not be scored."""
    stderr: float | None
    """Standard error of `acc` (lm-eval's, the sample mean's)."""
    n: int | None
    """Items scored."""
    version: str | None
    """The task's version (the suite's SUITE_VERSION for our tasks)."""
    note: str | None = None
    """Why `acc` is None (lm-eval missing, unknown task, dataset not cached, task error)."""


def task_names(value: str) -> tuple[str, ...]:
    """The lm-eval tasks a `quality` value names: `suite` expands to the shipped suite;
    `off`, `none` or empty: none."""
    out: list[str] = []
    for name in (n.strip() for n in value.split(",")):
        if name.lower() in OFF:
            continue
        for task in (tuple(suite.TASKS) if name.lower() == SUITE else (name,)):
            if task not in out:
                out.append(task)
    return tuple(out)


def available() -> bool:
    """Whether lm-eval is installed (without importing it)."""
    return importlib.util.find_spec("lm_eval") is not None


def mean(scores: Sequence[TaskScore]) -> float | None:
    """The headline `quality`: the mean accuracy of the tasks that were scored; None when
    none was."""
    accs = [s.acc for s in scores if s.acc is not None]
    return math.fsum(accs) / len(accs) if accs else None


def unscored(names: Sequence[str], note: str) -> tuple[TaskScore, ...]:
    """Every task in `names`, not scored, for `note`."""
    return tuple(TaskScore(t, None, None, None, None, note) for t in names)


def score(model: Any, tokenizer: Any, names: Sequence[str], work_dir: Path, *,
          items: int, batch_size: int) -> tuple[TaskScore, ...]:
    """Score `model` (a transformers causal LM, as measured: quantized or adapted) on each
    task of `names`, one at a time, so one task's failure leaves the others scored.

    Suite tasks are generated (`items` each) into `work_dir`; other lm-eval tasks score
    their first `items` documents. `tokenizer` is a transformers tokenizer.
    """
    if not names:
        return ()
    if not available():
        return unscored(names, EVAL_EXTRA_NOTE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ours = [t for t in names if t in suite.TASKS]
    include = suite.write(work_dir, ours, items) if ours else None
    manager = TaskManager(include_path=str(include) if include else None,
                          include_defaults=any(t not in suite.TASKS for t in names))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = []
    for task in names:
        if task not in manager.all_tasks:
            out.append(TaskScore(task, None, None, None, None,
                                 f"unsupported: unknown lm-eval task {task!r}"))
            continue
        try:
            results = simple_evaluate(model=lm, tasks=[task], task_manager=manager,
                                      limit=None if task in suite.TASKS else items,
                                      log_samples=False, bootstrap_iters=1000,
                                      verbosity="ERROR")
        except Exception as e:  # noqa: BLE001 - lm-eval's errors are many; each is a reason
            out.append(TaskScore(task, None, None, None, None,
                                 f"unsupported: lm-eval could not score {task}: "
                                 f"{one_line(e)}"))
            continue
        out.append(_read(task, results))
    return tuple(out)


def _read(task: str, results: Any) -> TaskScore:
    """The task's score from simple_evaluate's dict (a group: its own aggregate row)."""
    row = (results or {}).get("results", {}).get(task, {})
    key = next((k for k in METRIC_KEYS if isinstance(row.get(k), (int, float))), None)
    if key is None:
        return TaskScore(task, None, None, None, None,
                         f"unsupported: {task} reports no accuracy or exact match "
                         f"(has {', '.join(sorted(k for k in row if ',' in k)) or 'nothing'})")
    metric, _, flt = key.partition(",")
    stderr = row.get(f"{metric}_stderr,{flt}")
    n_samples = (results.get("n-samples") or {}).get(task) or {}
    n = n_samples.get("effective") or row.get("sample_len")
    version = (results.get("versions") or {}).get(task)
    return TaskScore(task, float(row[key]),
                     float(stderr) if isinstance(stderr, (int, float)) else None,
                     int(n) if isinstance(n, int) else None,
                     None if version is None else str(version))


def metrics(scores: Sequence[TaskScore], note: str | None = None) -> list[Metric]:
    """`acc_<task>` and `acc_<task>_stderr` of each task and the headline `quality` (their
    mean); a task not scored has None with its note, `quality` None with `note` (or the
    tasks' notes) when no task was scored."""
    out: list[Metric] = []
    for s in scores:
        out.append(Metric(f"acc_{s.task}", s.acc, "fraction", SOURCE, s.note))
        out.append(Metric(f"acc_{s.task}_stderr", s.stderr, "fraction", SOURCE, s.note))
    headline = mean(scores)
    why = None
    if headline is None:
        why = note or "; ".join(dict.fromkeys(s.note for s in scores if s.note)) or None
    out.append(Metric("quality", headline, "fraction", SOURCE, why))
    return out


def info(scores: Sequence[TaskScore]) -> dict[str, dict[str, Any]]:
    """Per task: n, stderr, version and the note, for the run's info."""
    return {s.task: {"acc": s.acc, "stderr": s.stderr, "n": s.n, "version": s.version,
                     "note": s.note} for s in scores}
