"""Vision-language models from catalog cards: transformers' own VLM classes (Idefics3 for
SmolVLM, Qwen2-VL, LLaVA) built with seeded random weights from a card's shape, or loaded
offline from local weights; their three parts (vision tower, projector, language model);
and the model inputs of a batch of images and prompts.

Random-weight shapes have no processor files: their prompts go through the byte tokenizer
(runners.models.tokenizer) with the card's image token ids, and their images are resized to
the card's `image_size` and normalised to [-1, 1] here, laid out as each model's forward
takes them (Qwen2-VL: flattened patches in merge-window order, as its image processor
writes them). Local weights bring their processor (AutoProcessor, offline); without one
they are fed the same way as a shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.errors import BadInput, OutOfMemory
from runners.models import build as model_mod
from runners.models import local
from runners.models.cards import VLM_ARCHS, ModelCard, VisionShape

if TYPE_CHECKING:
    import torch

_CLASSES = {
    "idefics3": ("Idefics3Config", "Idefics3ForConditionalGeneration"),
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration"),
}
PARTS = {
    # arch -> (vision tower, projector, language model), attribute paths from the model
    "idefics3": ("model.vision_model", "model.connector", "model.text_model"),
    "qwen2_vl": ("model.visual", "model.visual.merger", "model.language_model"),
    "llava": ("model.vision_tower", "model.multi_modal_projector", "model.language_model"),
}
"""Where each part of a VLM sits. Qwen2-VL's projector (the patch merger) lives inside its
vision module, so `vision` excludes it wherever the parts are told apart."""


def is_vlm(card: Any) -> bool:
    """Whether a card (or catalog mapping) describes a vision-language model."""
    vision = card.get("vision") if isinstance(card, dict) else getattr(card, "vision", None)
    return vision is not None


def _text_config(card: ModelCard) -> dict[str, Any]:
    text: dict[str, Any] = dict(
        vocab_size=card.vocab_size, hidden_size=card.hidden_size,
        intermediate_size=card.intermediate_size, num_hidden_layers=card.num_layers,
        num_attention_heads=card.num_heads, num_key_value_heads=card.num_kv_heads,
        max_position_embeddings=card.max_position, tie_word_embeddings=card.tie_embeddings,
        bos_token_id=card.bos_token_id, eos_token_id=card.eos_token_id,
        pad_token_id=card.pad_token_id)
    if card.arch == "qwen2_vl":
        half = card.head_dim // 2
        t = half // 4
        hw = (half - t) // 2
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(card.rope_theta),
                                   "mrope_section": [t, hw, half - t - hw]}
    else:
        text["model_type"] = "llama"
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(card.rope_theta)}
    return text


def build_config(card: ModelCard) -> Any:
    """The transformers config of a VLM card (architecture shape only)."""
    import transformers

    v = _vision(card)
    config_cls = getattr(transformers, _CLASSES[card.arch][0])
    text = _text_config(card)
    if card.arch == "idefics3":
        vision = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                      num_hidden_layers=v.layers, num_attention_heads=v.heads,
                      image_size=v.image_size, patch_size=v.patch_size)
        config = config_cls(image_token_id=v.image_token_id, text_config=text,
                            vision_config=vision, scale_factor=v.merge,
                            tie_word_embeddings=card.tie_embeddings)
    elif card.arch == "qwen2_vl":
        vision = dict(depth=v.layers, embed_dim=v.hidden_size, hidden_size=card.hidden_size,
                      num_heads=v.heads, mlp_ratio=max(1, v.intermediate_size // v.hidden_size),
                      patch_size=v.patch_size, spatial_merge_size=v.merge,
                      temporal_patch_size=2, in_channels=3)
        config = config_cls(text_config=text, vision_config=vision,
                            image_token_id=v.image_token_id,
                            vision_start_token_id=v.vision_start_id,
                            vision_end_token_id=v.vision_end_id,
                            tie_word_embeddings=card.tie_embeddings)
    else:
        vision = dict(model_type="clip_vision_model", hidden_size=v.hidden_size,
                      intermediate_size=v.intermediate_size, num_hidden_layers=v.layers,
                      num_attention_heads=v.heads, image_size=v.image_size,
                      patch_size=v.patch_size)
        config = config_cls(text_config=text, vision_config=vision,
                            image_token_id=v.image_token_id, vision_feature_layer=v.feature_layer,
                            tie_word_embeddings=card.tie_embeddings)
    return config


def _vision(card: ModelCard) -> VisionShape:
    if card.vision is None or card.arch not in VLM_ARCHS:
        raise BadInput(f"model {card.id!r} is not a vision-language model (choose one of "
                       f"the catalog's {', '.join(VLM_ARCHS)} models, e.g. tiny-vlm)")
    return card.vision


def _model_class(arch: str) -> Any:
    import transformers

    return getattr(transformers, _CLASSES[arch][1])


def size_on_meta(card: ModelCard, dtype: torch.dtype | None = None) -> model_mod.ModelSize:
    """The size a VLM card's model would have in `dtype`, without allocating weights."""
    import torch

    with torch.device("meta"):
        model = _model_class(card.arch)._from_config(build_config(card), dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    return model_mod.ModelSize(params, params * itemsize + buffers)


def load(card: ModelCard, dtype: torch.dtype, device: str, seed: int, *,
         trust_remote_code: bool = False) -> model_mod.BuiltModel:
    """The card's VLM in `dtype` on `device`: seeded random weights drawn in float32 and
    rounded (as runners.models.build does for text), or local weights, always offline."""
    import torch

    if card.weights == "real":
        return _load_local(card, dtype, device, trust_remote_code)
    size = size_on_meta(card, dtype)
    free = model_mod.free_bytes(device)
    if free is not None and size.weight_bytes > model_mod.FIT_FRACTION * free:
        raise OutOfMemory(f"model {card.id!r} needs {size.weight_bytes / model_mod.GIB:.2f} "
                          f"GiB of weights in {model_mod.dtype_name(dtype)} but {device} has "
                          f"{free / model_mod.GIB:.2f} GiB free")
    torch.manual_seed(seed)
    with torch.device(device):
        model = _model_class(card.arch)._from_config(build_config(card), dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    built = model_mod.BuiltModel(
        model=model, size=model_mod.measure(model), dtype="float32", init_dtype="float32",
        weights="random", attn_impl=str(getattr(model.config, "_attn_implementation", None)))
    return model_mod.cast(built, dtype)


def _load_local(card: ModelCard, dtype: torch.dtype, device: str,
                trust_remote_code: bool) -> model_mod.BuiltModel:
    from transformers import AutoModelForImageTextToText

    where = local.local_dir(card.id)
    if where is None:
        raise BadInput(f"no local weights for {card.id!r}: pass a model dir or a cached "
                       "org/name (weights are never downloaded)")
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            where, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load vision-language weights from {where}: "
                       f"{str(e).splitlines()[0]}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model_mod.BuiltModel(
        model=model, size=model_mod.measure(model), dtype=model_mod.dtype_name(dtype),
        init_dtype=model_mod.dtype_name(dtype), weights="real",
        attn_impl=str(getattr(model.config, "_attn_implementation", None)),
        source=f"local weights at {where}")


def part(model: Any, arch: str, name: str) -> Any:
    """The `vision`, `projector` or `language` module of a built VLM."""
    path = PARTS[arch][("vision", "projector", "language").index(name)]
    obj = model
    for attr in path.split("."):
        obj = getattr(obj, attr)
    return obj


def part_prefixes(model: Any, arch: str) -> dict[str, str]:
    """`vision`/`projector`/`language` -> the module-name prefix of that part in `model`
    (for quantization excludes and adapter targets)."""
    names = {id(m): n for n, m in model.named_modules()}
    return {p: names[id(part(model, arch, p))] for p in ("vision", "projector", "language")}


# -- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompter:
    """Turns images and prompts into one model's inputs."""

    card: ModelCard
    processor: Any = None
    """A local model's AutoProcessor; None: the byte tokenizer and own preprocessing."""

    @property
    def image_tokens(self) -> int:
        return _vision(self.card).image_tokens

    def ids(self, prompt: str) -> list[int]:
        """The prompt's token ids, image tokens included (byte tokenizer path)."""
        from runners.models.tokenizer import ByteTokenizer

        v = _vision(self.card)
        image = [v.image_token_id] * v.image_tokens
        if v.vision_start_id is not None and v.vision_end_id is not None:
            image = [v.vision_start_id, *image, v.vision_end_id]
        bos = [] if self.card.bos_token_id is None else [self.card.bos_token_id]
        return bos + image + ByteTokenizer().encode(prompt)

    def inputs(self, images: Sequence[Any], prompts: Sequence[str], device: str,
               pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for one request: every prompt left-padded to `pad_to` (or the
        longest), one image each."""
        if self.processor is not None:
            return self._processed(images, prompts, device)
        import torch

        rows = [self.ids(p) for p in prompts]
        width = max(pad_to or 0, max(len(r) for r in rows))
        pad = self.card.pad_token_id if self.card.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows],
                            dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, **self.pixels(images)}
        if self.card.arch == "qwen2_vl":
            out["mm_token_type_ids"] = (ids == _vision(self.card).image_token_id).long()
        return {k: t.to(device) for k, t in out.items()}

    def pixels(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Pixel inputs of a batch of PIL images, as the card's model takes them."""
        import numpy as np
        import torch

        v = _vision(self.card)
        side = v.image_size
        arrays = [np.asarray(im.convert("RGB").resize((side, side)), dtype=np.float32)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        if self.card.arch == "idefics3":
            return {"pixel_values": x.unsqueeze(1)}  # [batch, images, 3, H, W]
        if self.card.arch == "llava":
            return {"pixel_values": x}
        # Qwen2-VL: a frame repeated to temporal_patch_size 2, cut into patches in the
        # order of its image processor (merge windows of merge x merge patches).
        b, p, m = x.shape[0], v.patch_size, v.merge
        g = side // p
        x = x[:, :, : g * p, : g * p].unsqueeze(1).repeat(1, 2, 1, 1, 1)  # b t c h w
        x = x.reshape(b, 1, 2, 3, g // m, m, p, g // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        patches = x.reshape(b * g * g, 3 * 2 * p * p)
        grid = torch.tensor([[1, g, g]] * b, dtype=torch.long)
        return {"pixel_values": patches, "image_grid_thw": grid}

    def _processed(self, images: Sequence[Any], prompts: Sequence[str],
                   device: str) -> dict[str, torch.Tensor]:
        proc = self.processor
        texts = []
        for prompt in prompts:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": prompt}]}]
            texts.append(proc.apply_chat_template(messages, add_generation_prompt=True))
        tok = getattr(proc, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
        out = proc(text=texts, images=[[im] for im in images], return_tensors="pt",
                   padding=True)
        return {k: v.to(device) for k, v in out.items() if hasattr(v, "to")}

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids as text, cut at the first end-of-sequence token."""
        eos = self.card.eos_token_id
        cut = list(ids)
        if eos is not None and eos in cut:
            cut = cut[: cut.index(eos)]
        if self.processor is not None:
            return str(self.processor.decode(cut, skip_special_tokens=True))
        from runners.models.tokenizer import ByteTokenizer

        return ByteTokenizer().decode(cut)


def prompter_for(card: ModelCard) -> Prompter:
    """How a card's model is prompted: its local processor when it has one, else the byte
    tokenizer with the card's image token ids."""
    if card.weights == "real" and card.tokenizer == "hf":
        where = local.local_dir(card.id)
        if where is not None and (Path(where) / "preprocessor_config.json").is_file():
            from transformers import AutoProcessor

            return Prompter(card, AutoProcessor.from_pretrained(where, local_files_only=True))
    return Prompter(card)
