"""Weight quantization techniques (optimum-quanto, optionally torchao) and the bytes a
quantized model really stores.

Why bytes are counted here and not from `numel * element_size`: a quantized weight is a
tensor subclass whose logical dtype is the compute dtype (bf16) while its storage is packed
integers plus scales (and shifts). MCR divides original by compressed bytes, so the count
walks each subclass down to the plain tensors it holds (`__tensor_flatten__`, the protocol
both quanto and torchao implement) and adds their bytes.

Which kernel runs is decided by the library from the weight's dtype, device and shape
(quanto 0.2.7: `WeightQBytesTensor.create`, `WeightQBitsTensor.create`, `qbytes_mm`), so
after quantizing the runner reads it back from the weight classes and reports it: a
quantized model that decodes slower than bf16 is only understandable with that fact.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runners.errors import Unsupported, is_oom, one_line


@dataclass(frozen=True, slots=True)
class Quantization:
    """One weight-quantization technique."""

    id: str
    """Technique id (`int8`, `int4`, `fp8`, `w8a8`, `int8-ao`, `int4-ao`)."""
    backend: str
    """`quanto` (optimum-quanto) or `torchao`."""
    weights: str
    """Weight format: quanto qtype name (`qint8`, `qint4`, `qfloat8`) or torchao's (`int8`,
    `int4`)."""
    activations: str | None = None
    """Activation qtype (`qint8` for w8a8), calibrated before freezing; None: weight-only."""
    group_size: int | None = None
    """Weights sharing one scale along the input dimension (int4); None: per output row."""

    @property
    def calibrated(self) -> bool:
        return self.activations is not None


QUANTIZATIONS: dict[str, Quantization] = {q.id: q for q in (
    Quantization("int8", "quanto", "qint8"),
    Quantization("int4", "quanto", "qint4", group_size=128),
    Quantization("fp8", "quanto", "qfloat8"),
    Quantization("w8a8", "quanto", "qint8", activations="qint8"),
    Quantization("int8-ao", "torchao", "int8"),
    Quantization("int4-ao", "torchao", "int4", group_size=128),
)}
"""Weight-quantization techniques by id."""

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

def check_available(q: Quantization, device: str) -> None:
    """Raise Unsupported when the technique's backend cannot run here (before any loading)."""
    if q.backend == "quanto":
        if importlib.util.find_spec("optimum.quanto") is None:
            raise Unsupported(f"{q.id} needs optimum-quanto, which is not installed "
                              "(pip install optimum-quanto)")
        return
    if importlib.util.find_spec("torchao") is None:
        raise Unsupported(f"{q.id} needs torchao, which is not installed here "
                          f"(pip install torchao); quanto's {q.id.removesuffix('-ao')} is the "
                          "installed alternative")
    if q.weights == "int4" and not device.startswith("cuda"):
        raise Unsupported(f"{q.id} runs torchao's int4 tinygemm layout, which needs a CUDA "
                          f"device (got {device})")


# -- quantizing -------------------------------------------------------------------------------

def exclude_patterns(text: str) -> tuple[str, ...]:
    """`lm_head,model.layers.0.*` -> patterns; `none` or empty -> no exclusions."""
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if items in ((), ("none",)) else items


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def quantize(model: torch.nn.Module, q: Quantization, exclude: Sequence[str],
             calibrate: Callable[[], None] | None = None) -> None:
    """Quantize `model` in place (and freeze it: weights become their quantized storage).

    `calibrate` runs calibration forwards for techniques with quantized activations; it is
    called inside quanto's Calibration context, between quantizing and freezing.
    """
    if q.backend == "quanto":
        _quanto(model, q, exclude, calibrate)
    else:
        _torchao(model, q, exclude)
    if quantized_linear_count(model) == 0:
        raise Unsupported(f"{q.id}: no layer was quantized (exclude={','.join(exclude)!r} "
                          "leaves nothing)")


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


def _torchao(model: torch.nn.Module, q: Quantization, exclude: Sequence[str]) -> None:
    try:
        from torchao.quantization import quantize_
    except ImportError as e:
        raise Unsupported(f"{q.id}: torchao does not import here: {one_line(e)}") from None
    config = _torchao_config(q)

    def only_linears(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not _excluded(fqn, exclude)

    try:
        quantize_(model, config, filter_fn=only_linears)
    except ImportError as e:  # a kernel package this layout needs (e.g. int4's mslk)
        raise Unsupported(f"{q.id}: torchao's {q.weights} layout needs a package that is "
                          f"not installed here: {one_line(e)}") from None
    except (RuntimeError, NotImplementedError, ValueError, AssertionError) as e:
        if is_oom(e):
            raise
        raise Unsupported(f"{q.id}: torchao cannot quantize this model here: "
                          f"{one_line(e)}") from None


def _torchao_config(q: Quantization) -> Any:
    """The torchao config object for `q`: the class API (torchao >= 0.10) or the older
    factory functions, whichever this torchao has."""
    import torchao.quantization as tq

    if q.weights == "int8":
        names: tuple[tuple[str, dict[str, Any]], ...] = (
            ("Int8WeightOnlyConfig", {}), ("int8_weight_only", {}))
    else:
        names = (("Int4WeightOnlyConfig", {"group_size": q.group_size}),
                 ("int4_weight_only", {"group_size": q.group_size}))
    for name, kwargs in names:
        factory = getattr(tq, name, None)
        if factory is not None:
            return factory(**kwargs)
    raise Unsupported(f"{q.id}: this torchao has none of {', '.join(n for n, _ in names)}")


# -- what ran ---------------------------------------------------------------------------------

def _linear_weights(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and isinstance(weight, torch.Tensor):
            yield name, weight.data if isinstance(weight, torch.nn.Parameter) else weight


def _is_quantized(t: torch.Tensor) -> bool:
    return type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__")


def quantized_linear_count(model: torch.nn.Module) -> int:
    return sum(1 for _, w in _linear_weights(model) if _is_quantized(w))


def weight_classes(model: torch.nn.Module) -> dict[str, int]:
    """How many linear layers hold each weight class (`Tensor` for unquantized ones)."""
    counts = Counter(type(w).__name__ for _, w in _linear_weights(model))
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
    for _, w in _linear_weights(model):
        name = type(w).__name__
        if name in kernels or not _is_quantized(w):
            continue
        if name == "WeightQBytesTensor":
            kernels[name] = _qbytes_kernel(w, device_type)
        else:
            kernels[name] = _QUANTO_KERNELS.get((name, device_type), f"{name} (library default)")
    return {"weight_classes": weight_classes(model), "kernels": kernels}


def extension_needed(model: torch.nn.Module, device: str) -> str | None:
    """The quanto extension the model's weights will call (`quanto_cpp` / `quanto_cuda`),
    which quanto compiles on first use; None when every kernel is a torch built-in."""
    names = {type(w).__name__ for _, w in _linear_weights(model)}
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
