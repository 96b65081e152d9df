"""Vision-language models from cards: shapes sized without weights, tiny builds of every
architecture answering through the vision engine as generate() does, and the parts."""

from __future__ import annotations

from dataclasses import replace

import efficientllm_data
import pytest
import torch

from runners.data import images
from runners.engines.vision import VisionLoopEngine
from runners.errors import BadInput
from runners.models import catalog, vlm

SHAPES = {
    # catalog id -> (parameters of the published checkpoint's architecture, image tokens)
    "smolvlm-256m": (256_484_928, 64),
    "smolvlm-2b": (2_246_272_880, 81),
    "qwen2-vl-2b": (2_208_985_600, 256),
    "llava-1.5-7b": (7_063_427_072, 576),
}


@pytest.mark.parametrize("model_id", sorted(SHAPES))
def test_shapes_are_sized_on_meta(model_id: str) -> None:
    card = catalog.model_card(model_id)
    params, image_tokens = SHAPES[model_id]
    assert vlm.size_on_meta(card).total_params == params
    assert card.vision is not None and card.vision.image_tokens == image_tokens


def _tiny(arch: str) -> object:
    card = catalog.model_card("tiny-vlm")
    assert card.vision is not None
    if arch == "qwen2_vl":
        return replace(card, arch=arch, vision=replace(card.vision, vision_start_id=261,
                                                       vision_end_id=262))
    if arch == "llava":
        return replace(card, arch=arch, vision=replace(card.vision, merge=1))
    return card


@pytest.mark.parametrize(("arch", "image_tokens"), [
    ("idefics3", 16), ("qwen2_vl", 16 + 2), ("llava", 64)])
def test_every_architecture_answers_as_generate_does(arch: str, image_tokens: int) -> None:
    card = _tiny(arch)
    built = vlm.load(card, torch.float32, "cpu", seed=0)  # type: ignore[arg-type]
    prompter = vlm.Prompter(card)  # type: ignore[arg-type]
    pictures = [images.draw({"shape": "square", "colour": "blue", "count": n, "seed": n})
                for n in (1, 3)]
    inputs = prompter.inputs(pictures, ["How many?", "What colour are the shapes?"], "cpu")
    width = 1 + image_tokens + len("What colour are the shapes?")
    assert inputs["input_ids"].shape == (2, width)
    assert inputs["attention_mask"].sum().item() == 2 * width - (len("What colour are the "
                                                                      "shapes?") - len("How many?"))
    engine = VisionLoopEngine(built.model, arch, new_tokens=5, sync=None)
    timing, tokens = engine(inputs)
    engine.close()
    assert timing.vision_s is not None and 0 < timing.vision_s < timing.ttft_s <= timing.latency_s
    with torch.no_grad():
        out = built.model.generate(**inputs, max_new_tokens=5, min_new_tokens=5,
                                   do_sample=False, eos_token_id=None)
    assert torch.equal(tokens, out[:, width:])


def test_parts_and_their_prefixes() -> None:
    card = catalog.model_card("tiny-vlm")
    built = vlm.load(card, torch.float32, "cpu", seed=0)
    assert vlm.part_prefixes(built.model, card.arch) == {
        "vision": "model.vision_model", "projector": "model.connector",
        "language": "model.text_model"}


def test_a_text_card_is_not_a_vlm() -> None:
    with pytest.raises(BadInput, match="'tiny' is not a vision-language model"):
        vlm.build_config(catalog.model_card("tiny"))


@pytest.mark.parametrize(("targets", "vision", "modules", "where", "q_projs"), [
    (("language",), False, 4 * 7, {"model.text_model"}, 4),
    (("projector",), False, 1, {"model.connector"}, 0),
    (("language", "projector"), True, 4 * 7 + 1 + 2 * 6,
     {"model.text_model", "model.connector", "model.vision_model"}, 4 + 2),
])
def test_adapter_targets_stay_in_their_parts(targets: tuple[str, ...], vision: bool,
                                             modules: int, where: set[str],
                                             q_projs: int) -> None:
    from runners.families.vision_finetune import target_names

    card = catalog.model_card("tiny-vlm")
    built = vlm.load(card, torch.float32, "cpu", seed=0)
    names = target_names(built.model, card.arch, targets, "all-linear", vision)
    assert len(names) == modules and {".".join(n.split(".")[:2]) for n in names} == where
    only_q = target_names(built.model, card.arch, targets, "q_proj", vision)
    assert all(n.endswith("q_proj") for n in only_q) and len(only_q) == q_projs


@pytest.mark.parametrize("model_id", sorted(SHAPES))
def test_the_launcher_sizes_a_vlm_with_its_vision_tower(model_id: str) -> None:
    from runners import preflight

    card = catalog.model_card(model_id)
    assert preflight.card_params(card) == pytest.approx(SHAPES[model_id][0], rel=0.03)
    raw = efficientllm_data.find_model(model_id)
    assert preflight.card_params(raw) == preflight.card_params(card)  # mapping or card
