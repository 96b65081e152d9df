"""The shipped image set (drawn as its manifest says, answers exact), the VQA/caption scores
and the vision-language metrics' arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import efficientllm_data
import numpy as np
import pytest

from profiling.window import WindowResult
from runners.data import images
from runners.engines.vision import VisionTiming
from runners.errors import BadInput
from runners.families import vision_metrics as vm
from runners.models import weights
from runners.protocol import RANDOM_WEIGHTS_NOTE, Metric
from runners.techniques.quality import Reference


def test_the_committed_manifest_is_the_generated_one() -> None:
    lines = efficientllm_data.read_text(images.MANIFEST).splitlines()
    assert [json.loads(line) for line in lines] == images.manifest_records()
    assert len(lines) == 3 * 4 * 3


@pytest.mark.parametrize("record", images.manifest_records()[::5], ids=lambda r: r["id"])
def test_each_image_shows_what_its_answer_and_caption_say(record: dict) -> None:
    spec = record["draw"]
    pixels = np.asarray(images.draw(spec))
    colour = np.array(images.COLOURS[spec["colour"]])
    inked = np.all(pixels == colour, axis=-1)
    half = images.IMAGE_SIDE // 2
    quadrants = [inked[y:y + half, x:x + half].any() for y in (0, half) for x in (0, half)]
    assert sum(quadrants) == spec["count"]  # one shape a quadrant, none straddling
    assert inked.sum() + np.all(pixels == 255, axis=-1).sum() == pixels.shape[0] ** 2
    assert record["caption"].split()[:2] == [images.COUNTS[spec["count"] - 1], spec["colour"]]
    assert np.array_equal(pixels, np.asarray(images.draw(spec)))  # deterministic


def test_shipped_images_are_drawn_once_into_the_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a session fixture (tests/model_cache.py) may have pointed the cache elsewhere
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    first = images.load(None, tmp_path)
    assert len(first.items) == 36 and first.source == images.SHIPPED
    path = Path(first.items[0].image)
    assert path.parent == tmp_path / "cache" / images.CACHE_DIR
    stamp = path.stat().st_mtime_ns
    assert images.load(None, tmp_path).items == first.items and path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("prediction", "answer", "hit"), [
    ("Three.", "3", True), ("the red", "red", True), ("red circles here", "red", True),
    ("blue", "red", False), ("", "1", False), ("A circle", "circle", True)])
def test_exact_match(prediction: str, answer: str, hit: bool) -> None:
    assert images.exact_match(prediction, answer) is hit


def test_a_user_file_resolves_images_beside_it(tmp_path: Path) -> None:
    images.draw({"shape": "square", "colour": "green", "count": 2, "seed": 3}).save(
        tmp_path / "sq.png")
    path = tmp_path / "set.jsonl"
    path.write_text('{"image": "sq.png", "question": "How many?", "answer": 2}\n\n'
                    '{"image": "sq.png", "caption": "two green squares"}\n', encoding="utf-8")
    data = images.load(str(path))
    assert [(i.line, i.answer, i.caption) for i in data.items] == [
        (1, "2", None), (3, None, "two green squares")]
    assert [i.line for i in images.for_task(data, "vqa")] == [1]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path.write_text('{"image": "bad.png", "caption": "x"}\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r"line 1: cannot read image"):
        images.open_images(images.load(str(path)).items, str(path))


def test_scores() -> None:
    items = [images.Item("x.png", "q", a, None, n) for n, a in enumerate(("1", "red", "3"))]
    got = vm.score("vqa", items, ["1", "Red.", "two"])
    assert (got.accuracy, got.n, got.quality) == (pytest.approx(2 / 3), 3, pytest.approx(2 / 3))
    caps = [images.Item("x.png", None, None, c, 1) for c in ("one red circle", "two blue")]
    got = vm.score("captioning", caps, ["one red circle", "two blue"])
    assert got.bleu == pytest.approx(100.0) and got.quality == pytest.approx(1.0)


def _window(seconds: float) -> WindowResult:
    return WindowResult(name="measure", device="cpu", t0_ns=0, t1_ns=int(seconds * 1e9),
                        energy_j=None, energy_source=None, elapsed_s=seconds)


def test_vision_metrics_arithmetic() -> None:
    timings = [VisionTiming(1.0, 0.4, 0.1), VisionTiming(1.0, 0.6, 0.3)]
    text = [Metric("mcr", None, "ratio", "none", "x"), Metric("eval_ppl", None, "ppl", "none")]
    scores = vm.Scores("vqa", 0.5, None, 36)
    ref = Reference("float32", 400, None, 0.8)
    out = {m.name: m for m in vm.vision_metrics(
        text, timings, _window(4.0), batch_size=3, image_tokens=48, task="vqa",
        scores=scores, reference=ref, weight_bytes=100, quality_note=None)}
    assert out["vision_encode_s"].value == pytest.approx(0.2)
    assert out["vision_ttft_fraction"].value == pytest.approx(0.2 / 0.5)
    assert out["images_per_s"].value == pytest.approx(2 * 3 / 4.0)
    assert out["image_tokens_per_request"].value == 48
    assert out["vqa_accuracy"].value == 0.5 and out["quality"].value == 0.5
    assert out["mcr"].value == pytest.approx((400 / 100) * (0.5 / 0.8))
    assert out["caption_bleu"].value is None and "vqa run" in (out["caption_bleu"].note or "")
    assert out["eval_ppl"].note == vm.PPL_NOTE


def test_random_weights_leave_quality_null_with_the_reason() -> None:
    out = {m.name: m for m in vm.vision_metrics(
        [Metric("mcr", None, "ratio", "none")], [VisionTiming(1.0, 0.5, None)], _window(1.0),
        batch_size=1, image_tokens=16, task="captioning", scores=vm.Scores.unscored(
            "captioning"), reference=None, weight_bytes=10, quality_note=RANDOM_WEIGHTS_NOTE)}
    for name in ("caption_bleu", "quality", "mcr"):
        assert (out[name].value, out[name].source, out[name].note) == (
            None, "none", RANDOM_WEIGHTS_NOTE)
    assert out["vision_encode_s"].value is None and out["vision_ttft_fraction"].value is None
