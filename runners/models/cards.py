"""The typed records of the catalogs: a technique, and a model card (the shape of a decoder,
enough to build it with random weights). Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("qwen2", "llama", "mistral", "phi3")
"""Architectures the model builder knows (transformers model types)."""
VLM_ARCHS = ("idefics3", "qwen2_vl", "llava")
"""Vision-language architectures runners.models.vlm builds (SmolVLM, Qwen2-VL, LLaVA)."""


@dataclass(frozen=True, slots=True)
class Technique:
    """One efficiency technique of one family."""

    id: str
    """Lower-case id used by the CLI, the DB and the UI (`fp32`, `lora`, `gqa`)."""
    family: str
    """`inference`, `finetuning` or `pretraining`."""
    group: str
    """Comparison group within the family (`bit_width`, `peft`, `attention`, ...)."""
    available: bool
    """Whether the runner implements it yet."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class VisionShape:
    """The vision side of a vision-language card: its encoder, how patches become image
    tokens, and the special token ids the prompt uses."""

    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int
    image_size: int
    """Side in pixels every image is resized to (random-weight shapes: one tile)."""
    patch_size: int
    merge: int = 1
    """Patches merged per side into one image token (Idefics3 scale_factor, Qwen2-VL
    spatial_merge_size; 1 for LLaVA)."""
    image_token_id: int = 260
    vision_start_id: int | None = None
    """Qwen2-VL's <|vision_start|> / <|vision_end|> around the image tokens."""
    vision_end_id: int | None = None
    feature_layer: int = -1
    """LLaVA: the vision layer whose features are projected."""

    @property
    def image_tokens(self) -> int:
        """Image tokens one image becomes in the prompt."""
        side = self.image_size // self.patch_size
        return (side // self.merge) ** 2


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The shape of one decoder model, enough to build it with random weights."""

    id: str
    arch: str
    """transformers model type: qwen2, llama, mistral or phi3 (VLM_ARCHS for vision-language
    cards, whose other fields describe the language model)."""
    weights: str
    """`random` (built from this card) or `real` (loaded from local files)."""
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    available: bool
    description: str = ""
    rope_theta: float = 10000.0
    max_position: int = 4096
    requires: str | None = None
    """A package that must be installed for this model (real weights)."""
    tokenizer: str = "byte"
    """`byte` (runners.models.tokenizer.ByteTokenizer), `gguf` (the GGUF file's own vocabulary) or
    `hf` (the tokenizer saved beside local weights)."""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    vision: VisionShape | None = None
    """The vision encoder of a vision-language model (arch in VLM_ARCHS); None: text only."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
