"""`efficientllm eval`'s checks that need no runner: the --set keys it takes, the task set it
scores (the run's tasks plus the new ones), and a missing lm-eval refused up front."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from efficientllm_tui.commands import evaluate
from efficientllm_tui.errors import BadInput


def test_only_quality_keys_and_the_task_union() -> None:
    with pytest.raises(BadInput, match="eval takes only --set quality and quality_items"):
        evaluate.eval_sets(["quality=suite", "rank=4"])
    asked = evaluate.eval_sets(["quality=mmlu_pro,ellm_word_sorting", "quality_items=7"])
    run = {"run_id": "r1", "params": {"quality": "ellm_word_sorting,arc_easy", "rank": 8}}
    params = evaluate.eval_params(run, asked)
    assert params == {"quality": "ellm_word_sorting,arc_easy,mmlu_pro", "quality_items": 7,
                      "rank": 8, "score_of": "r1"}
    # a run that scored nothing and no task asked: the shipped suite
    assert evaluate.eval_params({"run_id": "r2", "params": {"quality": "off"}},
                                {})["quality"] == "suite"


def test_without_lm_eval_nothing_is_queued(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path))
    args = argparse.Namespace(run_id="last", sets=[], device=None, json=False, db=None)
    with pytest.raises(BadInput, match=r"lm-eval, which is not installed: pip install "
                                       r"'efficientllm-tui\[eval\]'"):
        evaluate.cmd_eval(args)
    assert not (tmp_path / "runs").exists()
