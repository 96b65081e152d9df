"""Task scores through lm-eval on the runner's own model: SmolLM2-135M bf16, int8 and int4 on
the whole shipped suite (CPU, real weights, 48 items a model), a task whose dataset is not
cached, an unknown task, and random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.protocol import RANDOM_WEIGHTS_NOTE, RunResult
from runners.techniques import scoring
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401

from .test_runner_inference import execute_here

pytestmark = pytest.mark.slow

TASKS = ",".join(scoring.suite.TASKS)
ITEMS = 8
SMALL = dict(seq_len=16, new_tokens=4, steps=1, warmup=1)


def _run(home: Path, technique: str, quality: str, model: str = MODEL
         ) -> tuple[int, RunResult, list[str]]:
    run, code = execute_here(home, f"q-{technique}", model=model, technique=technique,
                             params={"threads": 1, "eval_tokens": 64, "quality": quality,
                                     "quality_items": ITEMS}, **SMALL)
    events = run.events()
    windows = [e.get("name") for e in events if e.kind == "window"]
    return code, RunResult.from_dict(events[-1].fields), windows


@pytest.mark.skipif(not scoring.available(), reason="lm-eval (the eval extra) not installed")
def test_bf16_int8_int4_scored_and_mcr_from_the_scores(
        smollm2_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = {"bf16": _run(tmp_path / "bf16", "bf16", "suite"),
            "int8": _run(tmp_path / "int8", "int8", "suite,arc_easy,no_such_task"),
            "int4": _run(tmp_path / "int4", "int4", "suite")}
    for technique, (code, result, windows) in runs.items():
        assert code == 0 and result.status == "ok", result.error_message
        v = {m.name: m for m in result.metrics}
        # scored in a window of its own, after the measured one
        assert windows == ["warmup", "measure", "prefill", "quality"]
        accs = []
        for task in TASKS.split(","):
            acc, err = v[f"acc_{task}"], v[f"acc_{task}_stderr"]
            assert acc.source == "lm-eval" and acc.value is not None
            assert 0 <= acc.value <= 1 and acc.value * ITEMS == pytest.approx(
                round(acc.value * ITEMS))  # a whole number of the ITEMS items
            # the sample mean's standard error: sqrt(p (1 - p) / (n - 1))
            assert err.value == pytest.approx((acc.value * (1 - acc.value) / (ITEMS - 1)) ** 0.5)
            assert result.info["quality_tasks"][task]["n"] == ITEMS
            assert result.info["quality_tasks"][task]["version"] == "1.0"
            accs.append(acc.value)
        assert v["quality"].value == pytest.approx(sum(accs) / len(accs))
        assert result.info["mcr_quality"] == "tasks"
        # the fp32 reference was scored on the same tasks: the run's MCR is the size ratio
        # times the score ratio (never the perplexity ratio)
        ref_quality = v["quality"].value * v["compression_ratio"].value / v["mcr"].value
        assert 0 < ref_quality <= 1
        runs[technique] = (code, result, [str(ref_quality)])
    # every run compares with the same fp32 reference, scored the same way
    refs = [float(r[2][0]) for r in runs.values()]
    assert refs == pytest.approx([refs[0]] * 3)
    ratio = {t: {m.name: m.value for m in r[1].metrics}["compression_ratio"]
             for t, r in runs.items()}
    assert ratio["bf16"] == pytest.approx(2.0, rel=1e-5)
    assert ratio["bf16"] < ratio["int8"] < ratio["int4"]
    v = {m.name: m for m in runs["int8"][1].metrics}
    assert v["acc_arc_easy"].value is None and v["acc_arc_easy"].source == "none"
    assert v["acc_arc_easy"].note.startswith("unsupported: lm-eval could not score arc_easy")
    assert v["acc_no_such_task"].note == "unsupported: unknown lm-eval task 'no_such_task'"
    assert v["it"].value is not None and v["eval_ppl"].value is not None  # the cost is kept


def test_random_weights_are_not_scored(tmp_path: Path) -> None:
    code, result, windows = _run(tmp_path, "fp32", "suite", model="tiny")
    assert code == 0 and "quality" not in windows
    v = {m.name: m for m in result.metrics}
    for name in ("quality", "acc_ellm_word_sorting", "acc_ellm_word_sorting_stderr", "mcr"):
        assert (v[name].value, v[name].note) == (None, RANDOM_WEIGHTS_NOTE), name
