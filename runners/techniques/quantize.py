"""Weight quantization techniques (one bit-width each, on a backend: optimum-quanto,
torchao, gemlite or bitsandbytes) and the bytes a quantized model really stores.

Why bytes are counted here and not from `numel * element_size`: a quantized weight is a
tensor subclass whose logical dtype is the compute dtype (bf16) while its storage is packed
integers plus scales (and shifts). MCR divides original by compressed bytes, so the count
walks each subclass down to the plain tensors it holds (`__tensor_flatten__`, the protocol
both quanto and torchao implement) and adds their bytes; gemlite's and bitsandbytes' layers
hold their packed data and scales as parameters and buffers.

Which kernel runs is decided by the library from the weight's dtype, device and shape
(quanto 0.2.7: `WeightQBytesTensor.create`, `WeightQBitsTensor.create`, `qbytes_mm`), so
after quantizing the runner reads it back from the weight classes and reports it: a
quantized model that decodes slower than bf16 is only understandable with that fact.
The backend itself is chosen per run (`--set backend`, runners.techniques.quant_backends).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from runners.errors import BadInput, Unsupported, is_oom, one_line
from runners.techniques import quant_backends as qb


@dataclass(frozen=True, slots=True)
class Quantization:
    """One weight-quantization technique, on one backend once resolved."""

    id: str
    """Technique id (`int8`, `int4`, `fp8`, `w8a8`, `int8-ao`, `int4-ao`)."""
    backend: str
    """`auto` (chosen per run by `resolve`), or `quanto`, `torchao`, `gemlite`, `bnb`."""
    weights: str
    """Weight format: the bit-width (`int8`, `int4`, `fp8`) until resolved, then the
    backend's name for it (quanto's `qint8`, `qint4`, `qfloat8`; bitsandbytes' `nf4`)."""
    activations: str | None = None
    """Activation qtype (`qint8` for w8a8), calibrated before freezing; None: weight-only."""
    group_size: int | None = None
    """Weights sharing one scale along the input dimension (int4); None: per output row."""
    bits: str = ""
    """The bit-width the backends are chosen for: `int8`, `int4`, `fp8` or `w8a8`."""
    dynamic_activations: str | None = None
    """How a backend quantizes activations at run time, uncalibrated (bitsandbytes'
    LLM.int8(), torchao's fp8); None: they stay in the compute dtype."""

    @property
    def calibrated(self) -> bool:
        return self.activations is not None


def _q(id: str, backend: str, bits: str, **kw: Any) -> Quantization:
    return Quantization(id, backend, kw.pop("weights", bits), bits=bits, **kw)


QUANTIZATIONS: dict[str, Quantization] = {q.id: q for q in (
    _q("int8", "auto", "int8"),
    _q("int4", "auto", "int4", group_size=128),
    _q("fp8", "auto", "fp8"),
    _q("w8a8", "auto", "w8a8", weights="int8", activations="int8"),
    _q("int8-ao", "torchao", "int8"),
    _q("int4-ao", "torchao", "int4", group_size=128),
)}
"""Weight-quantization techniques by id. `int8-ao` and `int4-ao` are `int8` and `int4` with
the backend fixed to torchao (kept for the runs stored under those ids)."""

FORMATS: dict[tuple[str, str], dict[str, Any]] = {
    ("quanto", "int8"): {"weights": "qint8"},
    ("quanto", "int4"): {"weights": "qint4", "group_size": 128},
    ("quanto", "fp8"): {"weights": "qfloat8"},
    ("quanto", "w8a8"): {"weights": "qint8", "activations": "qint8"},
    ("torchao", "int8"): {"weights": "int8"},
    ("torchao", "int4"): {"weights": "int4", "group_size": 128},
    ("torchao", "fp8"): {"weights": "float8_e4m3fn",
                         "dynamic_activations": "float8_e4m3fn per row"},
    ("gemlite", "int8"): {"weights": "int8"},
    ("gemlite", "int4"): {"weights": "uint4 asymmetric", "group_size": 128},
    ("gemlite", "fp8"): {"weights": "float8_e4m3fn"},
    ("bnb", "int8"): {"weights": "int8",
                      "dynamic_activations": "int8 per row, outliers > 6.0 in 16-bit"},
    ("bnb", "int4"): {"weights": "nf4", "group_size": qb.BNB_4BIT_BLOCK},
}
"""What each backend stores for each bit-width it serves (runners.params.QUANT_BACKENDS)."""

DEFAULT_EXCLUDE = ("lm_head",)
"""Modules left unquantized unless `--set exclude=...` says otherwise. The output head is
the most quantization-sensitive layer, and on tied-embedding models quantizing it would
untie it from the embedding and store a second copy, growing the model."""


# -- bytes ------------------------------------------------------------------------------------

def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor keeps in memory: plain tensors by element size, subclasses (quantized
    weights, packed data) by the plain tensors they are made of."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(stored_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer of `model`, each tensor (tied weights) once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += stored_bytes(t.data if isinstance(t, torch.nn.Parameter) else t)
    return total


# -- availability -----------------------------------------------------------------------------

def resolve(q: Quantization, backend: str, device: str,
            dtype: torch.dtype | None = None) -> Quantization:
    """`q` on the backend that will run it: `backend` when named (the technique's own for
    `int8-ao` / `int4-ao`), else the first of quant_backends.PREFERENCE that can run on
    `device` in `dtype` (default: bf16 on CUDA, fp32 on CPU). Unsupported, with the reason
    (each backend's for `auto`), when none can; BadInput for a backend that does not serve
    the technique (runners.params.pair_problem refuses it before the runner starts)."""
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if q.backend != "auto":
        if backend not in ("auto", q.backend):
            raise BadInput(f"{q.id} runs on {q.backend}; --set backend={backend} does not "
                           f"apply (use {q.id.removesuffix('-ao')})")
        named = q.backend
    else:
        named = backend
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if named != "auto":
        if (named, q.bits) not in FORMATS:
            raise BadInput(f"{q.id} has no {named} backend")
        candidates: tuple[str, ...] = (named,)
    else:
        candidates = qb.PREFERENCE[device_type][q.bits]
    reasons = []
    for candidate in candidates:
        why = qb.why_not(candidate, q.bits, device, dtype)
        if why is None:
            return replace(q, backend=candidate, **FORMATS[candidate, q.bits])
        reasons.append(f"{candidate}: {why}" if named == "auto" else why)
    if named != "auto":
        alternative = ("; quanto's " + q.id.removesuffix("-ao") + " is the installed "
                       "alternative") if q.id.endswith("-ao") and qb.installed("quanto") else ""
        raise Unsupported(f"{q.id} on {named}: {reasons[0]}{alternative}")
    raise Unsupported(f"{q.id}: no backend can run it on {device} ({'; '.join(reasons)})")


def check_available(q: Quantization, device: str, backend: str = "auto",
                    dtype: torch.dtype | None = None) -> Quantization:
    """Raise Unsupported when no backend of the technique can run here (before any
    loading); the resolved technique otherwise (see `resolve`)."""
    return resolve(q, backend, device, dtype)


# -- quantizing -------------------------------------------------------------------------------

def exclude_patterns(text: str) -> tuple[str, ...]:
    """`lm_head,model.layers.0.*` -> patterns; `none` or empty -> no exclusions."""
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if items in ((), ("none",)) else items


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def _model_device_dtype(model: torch.nn.Module) -> tuple[str, torch.dtype]:
    weight = next(model.parameters())
    return str(weight.device), weight.dtype


def quantize(model: torch.nn.Module, q: Quantization, exclude: Sequence[str],
             calibrate: Callable[[], None] | None = None) -> Quantization:
    """Quantize `model` in place (and freeze it: weights become their quantized storage);
    returns `q` as it ran (an `auto` backend resolved on the model's device and dtype).

    `calibrate` runs calibration forwards for techniques with quantized activations; it is
    called inside quanto's Calibration context, between quantizing and freezing.
    """
    if q.backend == "auto":
        q = resolve(q, "auto", *_model_device_dtype(model))
    else:  # named by the caller, who checked that it can run here
        q = replace(q, **FORMATS[q.backend, q.bits])
    if q.backend == "quanto":
        _quanto(model, q, exclude, calibrate)
    else:
        qb.quantize(q.backend, model, q.id, q.bits, q.group_size,
                    lambda name: not _excluded(name, exclude))
    if quantized_linear_count(model) == 0:
        raise Unsupported(f"{q.id}: no layer was quantized (exclude={','.join(exclude)!r} "
                          "leaves nothing)")
    return q


def _quanto(model: torch.nn.Module, q: Quantization, exclude: Sequence[str],
            calibrate: Callable[[], None] | None) -> None:
    from optimum import quanto

    if q.calibrated and calibrate is None:
        raise ValueError(f"{q.id} quantizes activations and needs calibration data")
    try:
        quanto.quantize(model, weights=q.weights, activations=q.activations,
                        exclude=list(exclude) or None)
        if calibrate is not None and q.calibrated:
            # absmax scales, averaged over the batches with quanto's default momentum
            with quanto.Calibration(momentum=0.9):
                calibrate()
        quanto.freeze(model)
    except RuntimeError as e:
        if is_oom(e):
            raise
        # e.g. tinygemm's int4 packing wants output sizes divisible by 16 (a 260-token head)
        raise Unsupported(f"{q.id}: quanto cannot quantize this model here: "
                          f"{one_line(e)}") from None


# -- what ran ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Layer:
    name: str
    cls: str
    """The weight's class (quanto, torchao, `Tensor`), or the layer's own where the backend
    swaps the module (gemlite, bitsandbytes)."""
    quantized: bool
    weight: torch.Tensor | None
    module: torch.nn.Module


def _layers(model: torch.nn.Module) -> Iterable[_Layer]:
    """Every linear layer of `model`, quantized or not."""
    for name, module in model.named_modules():
        kind = qb.module_kind(module)
        weight = getattr(module, "weight", None)
        if kind is not None:
            yield _Layer(name, kind, True, weight if isinstance(weight, torch.Tensor) else None,
                         module)
        elif isinstance(module, torch.nn.Linear) and isinstance(weight, torch.Tensor):
            w = weight.data if isinstance(weight, torch.nn.Parameter) else weight
            yield _Layer(name, type(w).__name__, _is_quantized(w), w, module)


def _is_quantized(t: torch.Tensor) -> bool:
    return type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__")


def quantized_linear_count(model: torch.nn.Module) -> int:
    return sum(1 for layer in _layers(model) if layer.quantized)


def weight_classes(model: torch.nn.Module) -> dict[str, int]:
    """How many linear layers hold each weight class (`Tensor` for unquantized ones; the
    layer class where a backend swaps the module)."""
    counts = Counter(layer.cls for layer in _layers(model))
    return dict(sorted(counts.items()))


# Which matmul each quanto 0.2.7 weight class runs, read off its source (tensor/weights/*,
# library/qbytes_mm.py). Keys: (weight class, device type).
_QUANTO_KERNELS: dict[tuple[str, str], str] = {
    ("TinyGemmWeightQBitsTensor", "cuda"): "torch._weight_int4pack_mm (tinygemm int4 x bf16)",
    ("TinyGemmWeightQBitsTensor", "cpu"): "torch._weight_int4pack_mm_for_cpu (int4 x bf16)",
    ("AWQWeightQBitsTensor", "cuda"): "quanto AWQ int4 gemv/gemm (quanto_cuda extension)",
    ("MarlinF8QBytesTensor", "cuda"): "Marlin fp8 x fp16/bf16 gemm (quanto_cuda extension)",
    ("MarlinInt4WeightQBitsTensor", "cuda"): "Marlin int4 gemm (quanto_cuda extension)",
    ("WeightQBitsTensor", "cuda"): "quanto unpack (quanto_cuda) + dequantize + matmul",
    ("WeightQBitsTensor", "cpu"): "quanto unpack (quanto_cpp) + dequantize + matmul",
}
_EXTENSION_CLASSES = {"AWQWeightQBitsTensor", "MarlinF8QBytesTensor",
                      "MarlinInt4WeightQBitsTensor", "WeightQBitsTensor"}


def _qbytes_kernel(weight: torch.Tensor, device_type: str) -> str:
    """quanto's `qbytes_mm` dispatch for an 8-bit weight (library/qbytes_mm.py)."""
    act = getattr(weight, "activation_qtype", None)
    data = getattr(weight, "_data", None)
    compute = str(weight.dtype).removeprefix("torch.")
    if act is not None:
        if device_type == "cuda":
            return ("torch._int_mm int8 x int8 when more than 16 tokens, else dequantize + "
                    f"{compute} matmul")
        return "torch._int_mm int8 x int8 (CPU)"
    if data is not None and data.dtype.is_floating_point:
        return f"dequantize fp8 -> {compute} + matmul"
    if device_type == "cpu" and weight.dtype == torch.bfloat16:
        return "torch._weight_int8pack_mm (int8 x bf16, CPU)"
    return f"dequantize int8 -> {compute} + matmul (a full {compute} weight copy per call)"


def kernel_report(model: torch.nn.Module, device: str) -> dict[str, Any]:
    """Weight classes of the linear layers and the matmul each quantized class runs."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    kernels: dict[str, str] = {}
    for layer in _layers(model):
        name = layer.cls
        if name in kernels or not layer.quantized:
            continue
        if name == "WeightQBytesTensor" and layer.weight is not None:
            kernels[name] = _qbytes_kernel(layer.weight, device_type)
        else:
            kernels[name] = (_QUANTO_KERNELS.get((name, device_type))
                             or qb.kernel(name, layer.module, layer.weight, device_type)
                             or f"{name} (library default)")
    return {"weight_classes": weight_classes(model), "kernels": kernels}


def extension_needed(model: torch.nn.Module, device: str) -> str | None:
    """The quanto extension the model's weights will call (`quanto_cpp` / `quanto_cuda`),
    which quanto compiles on first use; None when every kernel is a torch built-in."""
    names = {layer.cls for layer in _layers(model)}
    if not names & _EXTENSION_CLASSES:
        return None
    return "quanto_cuda" if device.startswith("cuda") else "quanto_cpp"


def build_extension(name: str) -> None:
    """Compile (or load the cached build of) a quanto extension now, outside any timed
    window. Unsupported, with the compiler's first line, when it cannot be built."""
    from optimum.quanto.library.extensions import get_extension

    try:
        get_extension(name).lib  # noqa: B018 - the property compiles or loads the library
    except Exception as e:  # noqa: BLE001 - a failed build makes the technique unsupported here
        raise Unsupported(f"quanto's {name} extension could not be built here (it needs a C++"
                          f"{'/CUDA' if name == 'quanto_cuda' else ''} compiler and ninja): "
                          f"{one_line(e)}") from None
