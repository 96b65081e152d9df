"""runners.preflight's memory estimate: parameters from a card's shapes, the weights' dtype
a run builds, and the pairs that cannot fit a device (the Launch matrix marks them)."""

from __future__ import annotations

import json
from pathlib import Path

from runners import preflight

CARDS = {
    c["id"]: c
    for c in json.loads(
        (Path(__file__).parents[1] / "functional" / "catalog.json").read_text(encoding="utf-8")
    )["models"]
}
GIB = 2**30


def test_card_params_match_the_published_sizes() -> None:
    # Qwen2.5-0.5B has 0.49 B parameters, Llama-3.1-8B 8.03 B (their model cards)
    assert round(preflight.card_params(CARDS["qwen2.5-0.5b"]) / 1e9, 2) == 0.49
    assert round(preflight.card_params(CARDS["llama-3.1-8b"]) / 1e9, 2) == 8.03
    assert preflight.card_params({"id": "x"}) is None


def test_weight_dtype_follows_the_runner() -> None:
    assert preflight.weight_dtype("inference", "fp16", "cpu") == "fp16"
    assert preflight.weight_dtype("inference", "int8", "cpu") == "fp32"
    assert preflight.weight_dtype("inference", "int8", "cuda:0") == "bf16"
    assert preflight.weight_dtype("inference", "int8", "cpu", {"dtype": "bf16"}) == "bf16"
    assert preflight.weight_dtype("finetuning", "lora", "cuda:1") == "bf16"
    assert preflight.weight_dtype("pretraining", "mha", "cpu") is None


def test_fit_problem_on_a_24_gib_host() -> None:
    card = CARDS["qwen2.5-7b"]
    need = preflight.card_params(card) * 4
    assert preflight.fit_problem("inference", "fp32", card, "cpu", 24 * GIB) == (
        f"needs at least {need / GIB:.1f} GiB of fp32 weights; cpu has 24.0 GiB"
    )
    assert preflight.fit_problem("inference", "bf16", card, "cpu", 24 * GIB) is None
    # the same 0.9 share of memory as the runner's own check
    assert preflight.fit_problem("inference", "fp32", card, "cpu", int(need / 0.9) + 1) is None
    assert preflight.fit_problem("inference", "fp32", card, "cpu", int(need / 0.9) - 1)
    assert preflight.fit_problem("pretraining", "mha", card, "cpu", GIB) is None
