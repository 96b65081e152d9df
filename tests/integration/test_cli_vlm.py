"""Vision-language runs through the CLI into the store, on CPU with tiny-vlm: vqa under int8,
captioning on local weights (scored), bad image datasets refused, metrics recomputed from
the stored rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runners.data import images
from runners.protocol import RANDOM_WEIGHTS_NOTE

from .conftest import Cli
from .test_cli_preflight import _refused

pytestmark = pytest.mark.slow

SMALL = ("--steps", "3", "--warmup", "1", "--new-tokens", "6", "--batch-size", "2")
TINY_VLM_IMAGE_TOKENS = 16
"""(64 px / 8 px patches)^2 / scale_factor 2^2, per image."""


def _run(cli: Cli, *args: str) -> dict[str, Any]:
    out = cli("run", "-f", "inference", *SMALL, *args, "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["status"] == "ok", row["error_text"]
    shown = cli.json("show", row["run_id"], "--json")  # what the store kept
    return shown if isinstance(shown, dict) and "metrics" in shown else row


def _info(row: dict[str, Any]) -> dict[str, Any]:
    info = row["info"]
    return info if isinstance(info, dict) else json.loads(info)


def test_vqa_int8_on_tiny_vlm_is_measured_and_labelled_random(cli: Cli) -> None:
    row = _run(cli, "-m", "tiny-vlm", "-t", "int8", "--set", "task=vqa")
    m, notes, info = row["metrics"], row["notes"], _info(row)
    assert (row["weights"], info["task"], info["arch"]) == ("random", "vqa", "idefics3")
    # two images a request, 16 image tokens each
    assert m["image_tokens_per_request"] == 2 * TINY_VLM_IMAGE_TOKENS
    # BOS, the image tokens, the longest question of the shipped set (byte tokens)
    longest = max(len(images.prompt(r, "vqa").encode()) for r in images.load(
        None, cli.home).items)
    assert info["prompt_tokens"] == 1 + TINY_VLM_IMAGE_TOKENS + longest
    # recomputed from the stored rows
    assert m["images_per_s"] == pytest.approx(3 * 2 / info["measure_s"], rel=1e-9)
    assert m["vision_ttft_fraction"] == pytest.approx(m["vision_encode_s"] / m["ttft_s"],
                                                      rel=1e-9)
    assert 0 < m["vision_ttft_fraction"] < 1
    assert m["it"] == pytest.approx(3 * 2 * 6 / info["measure_s"], rel=1e-9)
    # only the language model is quantized: the vision tower and projector are excluded
    q = info["quantization"]
    assert q["exclude"] == ["lm_head", "model.vision_model*", "model.connector*"]
    assert m["weight_bytes"] < m["reference_weight_bytes"] / 2
    for name in ("vqa_accuracy", "quality", "mcr", "eval_ppl"):
        assert m[name] is None
    assert notes["vqa_accuracy"] == RANDOM_WEIGHTS_NOTE
    assert notes["mcr"] == RANDOM_WEIGHTS_NOTE


def test_captioning_on_local_weights_is_scored(cli: Cli, tmp_path: Path) -> None:
    import torch

    from runners.models import catalog, vlm

    built = vlm.load(catalog.model_card("tiny-vlm"), torch.float32, "cpu", 0)
    built.model.save_pretrained(tmp_path / "vlm")
    row = _run(cli, "-m", str(tmp_path / "vlm"), "-t", "fp32", "--set", "task=captioning",
               "--set", "quantize_vision=true")
    m, notes, info = row["metrics"], row["notes"], _info(row)
    assert row["weights"] == "real" and info["quality_items"] == len(images.manifest_records())
    assert info["bleu_signature"].startswith("nrefs:1|case:lc|eff:yes")
    # a number on real weights (a random model's captions share no words: 0), not NULL
    assert m["caption_bleu"] == pytest.approx(0.0, abs=1e-9)
    assert m["quality"] == pytest.approx(m["caption_bleu"] / 100)
    assert m["vqa_accuracy"] is None and "captioning run" in notes["vqa_accuracy"]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"image": "a.png", "question": "q"}', "not json"], "line 2: not JSON"),
    (['{"question": "q"}'], "line 1: needs an image path"),
    (['{"image": "missing.png", "caption": "c"}'], "line 1: image 'missing.png' is not a"),
])
def test_a_bad_image_dataset_is_refused_with_its_line(cli: Cli, tmp_path: Path,
                                                      lines: list[str], message: str) -> None:
    images.draw({"shape": "circle", "colour": "red", "count": 1, "seed": 1}).save(
        tmp_path / "a.png")
    path = tmp_path / "vqa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = _refused(cli, "run", "-f", "inference", "-m", "tiny-vlm", "-t", "fp32", "--set",
                    "task=vqa", "--dataset", str(path))
    assert message in line


def test_text_and_vision_tasks_need_their_kind_of_model(cli: Cli) -> None:
    line = _refused(cli, "run", "-f", "inference", "-m", "tiny-vlm", "-t", "fp32")
    assert "tiny-vlm is a vision-language model: --set task=vqa" in line
    line = _refused(cli, "run", "-f", "inference", "-m", "tiny", "-t", "fp32", "--set",
                    "task=captioning")
    assert "task captioning needs a vision-language model" in line


def test_lora_on_the_projector_of_tiny_vlm(cli: Cli) -> None:
    out = cli("run", "-f", "finetuning", "-m", "tiny-vlm", "-t", "lora", "--steps", "3",
              "--warmup", "1", "--batch-size", "2", "--set", "vlm_targets=projector",
              "--set", "rank=4", "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["status"] == "ok", row["error_text"]
    m, info = row["metrics"], _info(row)
    # one LoRA pair on the connector's 256 -> 256 projection (64-wide vision x 2^2 merge)
    assert m["trainable_params"] == (256 + 256) * 4
    assert info["trainable_by_part"] == {"vision": 0, "projector": 2048, "language": 0}
    assert m["total_params"] == 4_184_128  # the base VLM, adapters not counted
    assert m["st"] == pytest.approx(3 * 2 / (4_184_128 * info["measure_s"]), rel=1e-9)
    assert info["train_examples"] == 33 and info["heldout_examples"] == 3
    assert m["eval_ppl"] is None and row["notes"]["eval_ppl"] == RANDOM_WEIGHTS_NOTE
    assert m["eval_loss"] is not None and m["eval_loss"] > 0


def test_models_lists_each_model_s_tasks(cli: Cli) -> None:
    listed = {m["id"]: m for m in cli.json("models", "--json")}  # type: ignore[union-attr]
    assert listed["tiny-vlm"]["tasks"] == ["vqa", "captioning"]
    assert listed["tiny-vlm"]["vision"]["image_size"] == 64
    assert listed["tiny"]["tasks"] == ["decode"] and listed["tiny"]["vision"] is None
