"""Models from catalog cards: random-weight decoders built locally, sized without allocating,
and real weights loaded offline (`load`, through runners.models.weights).

Random weights are drawn in float32 from the seed and then rounded to the run's dtype when
that fits in memory, so an fp32 run and a bf16 run of one seed hold the same model (bf16
is the rounding of fp32). Where the float32 copy does not fit, weights are drawn directly
in the target dtype and `init_dtype` says so.

Sizes count the bytes tensors really store (runners.techniques.quantize.stored_bytes), so a
quantized
model reports its packed data plus scales, not its logical dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.errors import OutOfMemory
from runners.models.cards import ModelCard

if TYPE_CHECKING:
    import torch

_CLASSES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
}
GIB = float(2**30)
FIT_FRACTION = 0.9
"""Share of free memory the weights may take; the rest is left for activations and KV."""


@dataclass(frozen=True, slots=True)
class ModelSize:
    """How big a model is: its parameters and the bytes its tensors hold."""

    total_params: int
    """Parameters, each tied tensor counted once."""
    weight_bytes: int
    """Bytes of every parameter and buffer tensor, each counted once."""


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """A model ready to run, with the facts a result reports about it."""

    model: Any
    """The transformers PreTrainedModel, in eval mode, gradients off."""
    size: ModelSize
    dtype: str
    """Parameter dtype: float32, bfloat16 or float16."""
    init_dtype: str
    """dtype the random weights were drawn in (float32 unless that did not fit)."""
    weights: str
    """`random` or `real`."""
    attn_impl: str
    """transformers attention implementation (sdpa, eager, ...)."""
    source: str | None = None
    """Provenance of real weights (file, conversion); None for random weights."""


def _classes(arch: str) -> tuple[Any, Any]:
    import transformers

    config_name, model_name = _CLASSES[arch]
    return getattr(transformers, config_name), getattr(transformers, model_name)


def build_config(card: ModelCard) -> Any:
    """The transformers config of a card (architecture shape only)."""
    config_cls, _ = _classes(card.arch)
    kwargs: dict[str, Any] = dict(
        vocab_size=card.vocab_size,
        hidden_size=card.hidden_size,
        intermediate_size=card.intermediate_size,
        num_hidden_layers=card.num_layers,
        num_attention_heads=card.num_heads,
        num_key_value_heads=card.num_kv_heads,
        tie_word_embeddings=card.tie_embeddings,
        max_position_embeddings=card.max_position,
        rope_parameters={"rope_type": "default", "rope_theta": float(card.rope_theta)},
        bos_token_id=card.bos_token_id,
        eos_token_id=card.eos_token_id,
        pad_token_id=card.pad_token_id,
    )
    if card.arch in ("mistral", "phi3"):
        # The cards describe full-attention variants (Mistral 7B v0.2, Phi-3.5): no window.
        kwargs["sliding_window"] = None
    return config_cls(**kwargs)


def measure(model: Any) -> ModelSize:
    """Parameter count and stored bytes of a built (or meta) model; tied tensors once.

    A quantized weight counts its logical parameters and the bytes of its packed data and
    scales (runners.techniques.quantize.stored_bytes)."""
    from runners.techniques.quantize import stored_bytes

    seen: set[int] = set()
    params = 0
    nbytes = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        seen.add(id(p))
        params += p.numel()
        nbytes += stored_bytes(p.data)
    for b in model.buffers():
        if id(b) not in seen:
            seen.add(id(b))
            nbytes += stored_bytes(b)
    return ModelSize(total_params=params, weight_bytes=nbytes)


def size_on_meta(card: ModelCard, dtype: torch.dtype | None = None) -> ModelSize:
    """The size a card's model would have in `dtype`, without allocating any weights.

    Buffers (rotary frequencies) keep float32, as they do in a built model.
    """
    import torch

    params, buffer_bytes = _meta_counts(card)
    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    return ModelSize(total_params=params, weight_bytes=params * itemsize + buffer_bytes)


def _meta_counts(card: ModelCard) -> tuple[int, int]:
    """(parameter count, buffer bytes) of a card's model, built on the meta device."""
    import torch

    _, model_cls = _classes(card.arch)
    with torch.device("meta"):
        model = model_cls._from_config(build_config(card), dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return params, buffer_bytes


def free_bytes(device: str) -> int | None:
    """Memory free for new tensors on `device` (host available memory for cpu)."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or /proc unreadable: do not guess
        return None


def build(card: ModelCard, dtype: torch.dtype, device: str, seed: int) -> BuiltModel:
    """Build the card's model with seeded random weights on `device` in `dtype`.

    Raises OutOfMemory before allocating when the weights clearly cannot fit.
    """
    import torch

    _, model_cls = _classes(card.arch)
    params, buffer_bytes = _meta_counts(card)
    itemsize = torch.empty((), dtype=dtype).element_size()
    target = ModelSize(params, params * itemsize + buffer_bytes)
    fp32 = ModelSize(params, params * 4 + buffer_bytes)
    free = free_bytes(device)
    if free is not None and target.weight_bytes > FIT_FRACTION * free:
        raise OutOfMemory(f"model {card.id!r} needs {target.weight_bytes / GIB:.2f} GiB of "
                          f"weights in {_name(dtype)} but {device} has {free / GIB:.2f} GiB free")
    init_dtype = dtype
    if dtype != torch.float32 and (free is None or
                                   fp32.weight_bytes + target.weight_bytes <= FIT_FRACTION * free):
        init_dtype = torch.float32

    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls._from_config(build_config(card), dtype=init_dtype)
    if init_dtype != dtype:
        # Cast parameters only: rotary frequency buffers stay float32, as from_pretrained
        # leaves them. A tied Parameter is one object, so it is cast once.
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(dtype)
        model.config.dtype = dtype
    model.eval()
    model.requires_grad_(False)
    return BuiltModel(model=model, size=measure(model), dtype=_name(dtype),
                      init_dtype=_name(init_dtype), weights=card.weights,
                      attn_impl=str(getattr(model.config, "_attn_implementation", None)))


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bfloat16`."""
    return str(dtype).removeprefix("torch.")


_name = dtype_name


# -- real weights, and changing a model's dtype --------------------------------------------------

def load(card: ModelCard, dtype: torch.dtype, device: str, seed: int, *,
         home: Path | None = None, trust_remote_code: bool = False,
         on_phase: Any = None) -> BuiltModel:
    """The card's model in `dtype` on `device`: seeded random weights (`build`) or real
    weights (a packaged GGUF converted once into the cache under `home`, a local model dir,
    a local Hugging Face cache entry), always offline.

    `on_phase(name, **fields)` is told about slow steps (a first GGUF conversion).
    """
    if card.weights != "real":
        return build(card, dtype, device, seed)
    import torch

    from runners.models import weights

    source = weights.source_for(card, home, on_phase or (lambda name, **extra: None))
    free = free_bytes(device)
    need = _checkpoint_bytes(source.path, dtype)
    if free is not None and need is not None and need > FIT_FRACTION * free:
        raise OutOfMemory(f"model {card.id!r} needs about {need / GIB:.2f} GiB of weights in "
                          f"{_name(dtype)} but {device} has {free / GIB:.2f} GiB free")
    torch.manual_seed(seed)
    model = weights.load_model(source, dtype, device, trust_remote_code)
    return BuiltModel(model=model, size=measure(model), dtype=_name(dtype), init_dtype=_name(dtype),
                      weights="real",
                      attn_impl=str(getattr(model.config, "_attn_implementation", None)),
                      source=source.note)


def _checkpoint_bytes(path: Path, dtype: torch.dtype) -> int | None:
    """Roughly the bytes the checkpoint in `path` takes in `dtype` (from its safetensors
    headers), for the fit check; None when it cannot tell."""
    import json
    import struct

    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
    params = 0
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    try:
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for key, entry in header.items():
                if key == "__metadata__" or entry.get("dtype") not in sizes:
                    continue
                count = 1
                for dim in entry.get("shape", ()):
                    count *= int(dim)
                params += count
    except (OSError, ValueError, struct.error):
        return None
    return params * itemsize


def cast(built: BuiltModel, dtype: torch.dtype) -> BuiltModel:
    """`built` with its parameters (not its float32 rotary buffers) cast to `dtype`, in place."""
    if built.dtype == _name(dtype):
        return built
    _cast_parameters(built.model, dtype)
    return replace(built, size=measure(built.model), dtype=_name(dtype))


def _cast_parameters(model: Any, dtype: torch.dtype) -> None:
    import torch

    with torch.no_grad():
        for p in model.parameters():  # a tied Parameter is one object, cast once
            if p.dtype.is_floating_point:
                p.data = p.data.to(dtype)
    model.config.dtype = dtype


@contextlib.contextmanager
def cast_temporarily(model: Any, dtype: torch.dtype) -> Iterator[ModelSize]:
    """Run the block with the parameters cast to `dtype`, then put the originals back.

    Costs memory for both copies while the block runs. Yields the model's size in `dtype`.
    """
    import torch

    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    if all(p.dtype == dtype for p in params):
        yield measure(model)
        return
    originals = [p.data for p in params]
    old_dtype = model.config.dtype
    try:
        with torch.no_grad():
            for p in params:
                p.data = p.data.to(dtype)
        model.config.dtype = dtype
        yield measure(model)
    finally:
        for p, data in zip(params, originals, strict=True):
            p.data = data
        model.config.dtype = old_dtype


def tokenizer_for(card: ModelCard, home: Path | None = None,
                  trust_remote_code: bool = False) -> Any:
    """The tokenizer a card's text goes through: the byte tokenizer for random-weight shapes
    (and local models without one), else the weights' own (GGUF vocabulary, local files).

    Call after `load` for packaged GGUF models: the conversion writes their tokenizer.
    """
    from runners.models.tokenizer import ByteTokenizer

    if card.weights != "real" or card.tokenizer == "byte":
        return ByteTokenizer()
    from runners.models import weights

    return weights.load_tokenizer(weights.source_for(card, home), trust_remote_code)
