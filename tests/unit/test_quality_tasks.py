"""The offline quality suite: deterministic items whose answers are right, the `quality`
parameter, the task metrics and MCR from task scores (pure arithmetic, no model)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from profiling import metric_catalog
from runners import params
from runners.errors import BadInput
from runners.families.inference_metrics import inference_metrics
from runners.protocol import RANDOM_WEIGHTS_NOTE
from runners.techniques import scoring
from runners.techniques import tasks as suite
from runners.techniques.quality import Reference
from tests.unit.test_runner_inference_metrics import _measured


def test_the_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    a, b = suite.write(tmp_path / "a", n=20), suite.write(tmp_path / "b", n=20)
    for task in suite.TASKS:
        data = (a / f"{task}.jsonl").read_bytes()
        assert data == (b / f"{task}.jsonl").read_bytes()
        assert len(data.splitlines()) == 20
    assert suite.generate("ellm_dyck_languages", 5, seed=1) != suite.generate(
        "ellm_dyck_languages", 5, seed=2)
    assert suite.generate("ellm_word_sorting", 3) == suite.generate("ellm_word_sorting", 5)[:3]
    # the first item of the shipped suite, pinned: a change of any generator must bump
    # SUITE_VERSION (scores of two versions do not compare)
    first = suite.generate("ellm_multistep_arithmetic", 1)[0]
    assert first["input"] == "Compute the value.\n((0 - 6) - (-2 * -7)) ="
    assert first["answer"] == "-20"


def test_options_hold_the_answer_once() -> None:
    for name, task in suite.TASKS.items():
        for item in suite.generate(name, 50):
            assert len(item["choices"]) == len(set(item["choices"])) == task.choices, item
            assert item["choices"][item["target"]] == item["answer"], item
    targets = [i["target"] for i in suite.generate("ellm_date_arithmetic", 50)]
    assert set(targets) == {0, 1, 2, 3}  # the answer is not always in the same place
    assert suite.TASKS["ellm_boolean_expressions"].chance == 0.5
    assert metric_catalog.SUITE_TASKS == tuple(suite.TASKS)


def _body(item: dict[str, object], prefix: str, suffix: str) -> str:
    text = str(item["input"]).split("\n")[1]
    return text.removeprefix(prefix).removesuffix(suffix)


def test_answers_computed_independently() -> None:
    for item in suite.generate("ellm_boolean_expressions", 50):
        assert str(eval(_body(item, "", " is"))) == item["answer"]  # Python's own semantics
    for item in suite.generate("ellm_multistep_arithmetic", 50):
        assert str(eval(_body(item, "", " ="))) == item["answer"]
    for item in suite.generate("ellm_word_sorting", 50):
        assert item["answer"] == " ".join(sorted(_body(item, "List: ", "").split()))
    closer = {"(": ")", "[": "]", "{": "}", "<": ">"}
    for item in suite.generate("ellm_dyck_languages", 50):
        stack: list[str] = []
        for tok in _body(item, "Input: ", "").split():
            if tok in closer:
                stack.append(tok)
            else:
                assert closer[stack.pop()] == tok
        assert item["answer"] == " ".join(closer[t] for t in reversed(stack)) and stack
    words = {"a": 1, "an": 1, "two": 2, "three": 3}
    for item in suite.generate("ellm_object_counting", 50):
        m = re.match(r"I have (.*)\. How many (.*) do I have\?", str(item["input"]))
        assert m is not None
        kinds = {k: set(v) for k, v in suite.OBJECTS.items()}
        total = 0
        for part in m.group(1).replace(", and ", ", ").split(", "):
            count, noun = part.split(" ", 1)
            singular = {v: k for k, v in suite.IRREGULAR.items()}.get(noun, noun)
            singular = singular if singular in kinds[m.group(2)] else singular.removesuffix("s")
            total += words[count] if singular in kinds[m.group(2)] else 0
        assert str(total) == item["answer"], item
    for item in suite.generate("ellm_date_arithmetic", 50):
        m = re.match(r"Today is (\S+)\. What is the date (\d+) days? (after|before)",
                     str(item["input"]))
        assert m is not None
        today = dt.datetime.strptime(m.group(1), "%m/%d/%Y").date()
        days = int(m.group(2)) * (1 if m.group(3) == "after" else -1)
        assert (today + dt.timedelta(days=days)).strftime("%m/%d/%Y") == item["answer"]


def test_the_quality_parameter() -> None:
    assert params.resolve("inference", {})["quality"] == "off"
    assert params.resolve("inference", {"quality": "suite, mmlu_pro"})["quality"] == \
        "suite, mmlu_pro"
    with pytest.raises(BadInput, match="quality must be off, suite or comma-separated"):
        params.resolve("inference", {"quality": "mmlu pro;rm"})
    with pytest.raises(BadInput, match="quality_items must be at least 1"):
        params.resolve("inference", {"quality_items": 0})
    assert scoring.task_names("off") == () and scoring.task_names("none") == ()
    assert scoring.task_names("suite,mmlu_pro,ellm_word_sorting") == (*suite.TASKS, "mmlu_pro")


def test_without_lm_eval_every_task_is_unsupported(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(scoring, "available", lambda: False)
    scores = scoring.score(object(), object(), ("ellm_word_sorting", "mmlu_pro"), tmp_path,
                           items=5, batch_size=1)
    assert [(s.task, s.acc, s.note) for s in scores] == [
        ("ellm_word_sorting", None, scoring.EVAL_EXTRA_NOTE),
        ("mmlu_pro", None, scoring.EVAL_EXTRA_NOTE)]
    got = {m.name: m for m in scoring.metrics(scores)}
    assert got["quality"].value is None and got["quality"].note == scoring.EVAL_EXTRA_NOTE


def test_mcr_uses_the_task_scores_when_scored() -> None:
    scores = (scoring.TaskScore("a", 0.5, 0.1, 20, "1.0"), scoring.TaskScore("b", 0.3, 0.1, 20,
                                                                           "1.0"),
              scoring.TaskScore("c", None, None, None, None, "unsupported: not cached"))
    ref = Reference("bfloat16", 2_000_000, 10.0, task_quality=0.5)
    got = {m.name: m for m in inference_metrics(_measured(task_scores=scores, reference=ref))}
    assert got["quality"].value == pytest.approx(0.4) and got["quality"].source == "lm-eval"
    # (2 MB / 0.5 MB) x (0.4 / 0.5), not the perplexity ratio 10 / 12
    assert got["mcr"].value == pytest.approx(4.0 * 0.4 / 0.5)
    assert (got["acc_a"].value, got["acc_a_stderr"].value, got["acc_a"].unit) == (
        0.5, 0.1, "fraction")
    assert (got["acc_c"].value, got["acc_c"].source, got["acc_c"].note) == (
        None, "none", "unsupported: not cached")
    # no task asked for: no task metrics, MCR from perplexity as before
    plain = {m.name: m.value for m in inference_metrics(_measured(reference=ref))}
    assert "quality" not in plain and plain["mcr"] == pytest.approx(4.0 * 10 / 12)
    # random weights: every task NULL with the note, MCR too
    random = scoring.unscored(("a",), RANDOM_WEIGHTS_NOTE)
    got = {m.name: m for m in inference_metrics(_measured(
        task_scores=random, ppl=None, reference=Reference("float32", 2_000_000, None),
        quality_note=RANDOM_WEIGHTS_NOTE))}
    for name in ("acc_a", "acc_a_stderr", "quality", "mcr"):
        assert (got[name].value, got[name].note) == (None, RANDOM_WEIGHTS_NOTE), name


@pytest.mark.skipif(not scoring.available(), reason="lm-eval (the eval extra) not installed")
def test_a_task_that_fails_leaves_the_others_scored(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """One task raising inside lm-eval is that task's `unsupported` note; the task before
    and after it keep their scores (each task is its own simple_evaluate call)."""
    import lm_eval
    import lm_eval.models.huggingface as hf

    def fake_evaluate(*, tasks: list[str], **_: object) -> dict[str, object]:
        (task,) = tasks
        if task == "ellm_dyck_languages":
            raise RuntimeError("CUDA error: device-side assert triggered\nsecond line")
        return {"results": {task: {"acc,none": 0.75, "acc_stderr,none": 0.05}},
                "n-samples": {task: {"effective": 12}}, "versions": {task: "1.0"}}

    monkeypatch.setattr(hf, "HFLM", lambda **_: object())
    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_evaluate)
    names = ("ellm_word_sorting", "ellm_dyck_languages", "ellm_object_counting")
    scores = scoring.score(object(), object(), names, tmp_path, items=12, batch_size=1)
    assert [(s.task, s.acc, s.stderr, s.n, s.version) for s in scores] == [
        ("ellm_word_sorting", 0.75, 0.05, 12, "1.0"),
        ("ellm_dyck_languages", None, None, None, None),
        ("ellm_object_counting", 0.75, 0.05, 12, "1.0")]
    assert scores[1].note == ("unsupported: lm-eval could not score ellm_dyck_languages: "
                              "RuntimeError: CUDA error: device-side assert triggered")
    got = {m.name: m for m in scoring.metrics(scores)}
    assert got["quality"].value == pytest.approx(0.75)  # the mean of the two scored
    assert got["acc_ellm_dyck_languages"].note == scores[1].note
