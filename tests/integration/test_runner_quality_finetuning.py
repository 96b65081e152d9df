"""Fine-tuning scores the adapted model through lm-eval, and the base model once per cache
key: SmolLM2-135M under LoRA and IA3 on two suite tasks (CPU, real weights), the second
arm reading the base scores from the cache; random weights score nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.families import scored
from runners.protocol import RANDOM_WEIGHTS_NOTE, RunResult
from runners.techniques import scoring
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401

from .test_runner_inference import execute_here

pytestmark = pytest.mark.slow

TASKS = "ellm_boolean_expressions,ellm_object_counting"
ITEMS = 8
SMALL = dict(seq_len=32, batch_size=2, steps=2, warmup=0)


def _run(home: Path, run_id: str, technique: str, model: str = MODEL
         ) -> tuple[int, RunResult, list[str]]:
    run, code = execute_here(home, run_id, family="finetuning", model=model,
                             technique=technique, **SMALL,
                             params={"threads": 1, "eval_batches": 1, "quality": TASKS,
                                     "quality_items": ITEMS, "save": False})
    events = run.events()
    windows = [e.get("name") for e in events if e.kind == "window"]
    return code, RunResult.from_dict(events[-1].fields), windows


@pytest.mark.skipif(not scoring.available(), reason="lm-eval (the eval extra) not installed")
def test_adapted_model_scored_and_base_scored_once(smollm2_cache: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, lora, windows = _run(home, "ft-lora", "lora")
    assert code == 0 and lora.status == "ok", lora.error_message
    # the base before training, the adapted model after the measured window: own windows
    assert windows == ["base_quality", "measure", "quality"]
    cache = sorted(p.name for p in scored.cache_dir(home).iterdir())
    assert [name.rsplit("-", 1)[0] for name in cache] == sorted(TASKS.split(","))
    v = {m.name: m for m in lora.metrics}
    accs = []
    for task in TASKS.split(","):
        acc, err = v[f"acc_{task}"], v[f"acc_{task}_stderr"]
        assert acc.source == "lm-eval" and acc.value is not None
        assert acc.value * ITEMS == pytest.approx(round(acc.value * ITEMS))
        assert err.value == pytest.approx((acc.value * (1 - acc.value) / (ITEMS - 1)) ** 0.5)
        accs.append(acc.value)
        assert lora.info["quality_tasks"][task]["n"] == ITEMS
    assert v["quality"].value == pytest.approx(sum(accs) / len(accs))
    base_accs = [lora.info["base_quality_tasks"][t]["acc"] for t in TASKS.split(",")]
    assert v["base_quality"].value == pytest.approx(sum(base_accs) / len(base_accs))
    assert lora.info["base_quality_cached"] == []
    # the cache file holds exactly the base score the run reported
    for name in cache:
        doc = json.loads((scored.cache_dir(home) / name).read_text())
        assert doc["acc"] == lora.info["base_quality_tasks"][doc["task"]]["acc"]
        assert doc["n"] == ITEMS

    # a second arm, and a prompt-learning one (peft prepends its virtual tokens' logits)
    for technique in ("ia3", "prompt-tuning"):
        code, arm, windows = _run(home, f"ft-{technique}", technique)
        assert code == 0 and arm.status == "ok", arm.error_message
        assert windows == ["measure", "quality"]  # the base came from the cache
        assert arm.info["base_quality_cached"] == sorted(TASKS.split(","))
        w = {m.name: m for m in arm.metrics}
        assert w["base_quality"].value == v["base_quality"].value
        assert all(0 <= w[f"acc_{t}"].value <= 1 for t in TASKS.split(","))
        assert w["st"].value is not None  # the cost is measured as usual


def test_random_weights_score_nothing(tmp_path: Path) -> None:
    code, result, windows = _run(tmp_path, "ft-tiny", "lora", model="tiny")
    assert code == 0 and windows == ["measure"]
    v = {m.name: m for m in result.metrics}
    for name in ("quality", "base_quality", "acc_ellm_object_counting"):
        assert (v[name].value, v[name].note) == (None, RANDOM_WEIGHTS_NOTE), name
    assert not scored.cache_dir(tmp_path).exists()
