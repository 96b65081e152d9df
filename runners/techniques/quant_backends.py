"""The weight-quantization backends besides optimum-quanto (torchao, gemlite, bitsandbytes):
which bit-widths each serves, whether it can run on a device, how it quantizes a model, and
which kernel each of its layer classes runs.

Every import of torchao, gemlite and bitsandbytes is inside a function here: none of them
is needed to import the runners, and gemlite cannot even be imported without a CUDA device
(it reads the device's compute capability at import).

What each (backend, bit-width) stores and runs, read off each library's source:

- torchao 0.18: 8-bit `Int8WeightOnlyConfig` (per-row int8; eagerly an int8 -> compute-dtype
  cast and a matmul, one fused kernel only under torch.compile); 4-bit
  `Int4WeightOnlyConfig(tile_packed_to_4d)` (tinygemm, `torch._weight_int4pack_mm`, bf16 on
  CUDA: the default `plain` layout needs the separate `mslk` package); fp8
  `Float8DynamicActivationFloat8WeightConfig` per row (`torch._scaled_mm`, compute
  capability >= 8.9; activations are quantized to fp8 at run time, the layout torchao
  recommends for H100 inference).
- gemlite 0.6: Triton GEMV (batch <= 2 at 8 bits, <= 4 at 4 bits), split-K GEMM (< 64 rows)
  and GEMM kernels, fp16/bf16 activations on CUDA only: 8-bit `A16W8_INT8` and `A16W8_FP8`
  (per-row scales), 4-bit `A16Wn` over an asymmetric round-to-nearest grid in groups of 128
  (the HQQ layout `(W_q - zero) * scale`, quantized here without the hqq package).
- bitsandbytes 0.50: 8-bit `Linear8bitLt` (LLM.int8(): activations quantized per row at
  run time, columns with outliers above 6.0 kept in 16-bit, transformers' default
  threshold), 4-bit `Linear4bit` in NF4, blocks of 64 (transformers' defaults). It has a
  CPU path (torch fallbacks), but its wheel is over 40 MB, so it is an optional extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from runners.errors import Unsupported, is_oom, one_line

BACKENDS = ("quanto", "torchao", "gemlite", "bnb")
"""Weight-quantization backends (`--set backend=...`); `auto` picks by PREFERENCE."""

PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "torchao": ("torchao", "torchao"),
            "gemlite": ("gemlite", "gemlite"), "bnb": ("bitsandbytes", "bitsandbytes")}
"""Backend -> (module to find, distribution to pip install)."""

PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    "cuda": {"int8": ("gemlite", "quanto", "torchao", "bnb"),
             "int4": ("gemlite", "quanto", "torchao", "bnb"),
             "fp8": ("gemlite", "quanto", "torchao"),
             "w8a8": ("quanto",)},
    "cpu": {"int8": ("quanto", "torchao", "bnb"), "int4": ("quanto", "bnb"),
            "fp8": ("quanto",), "w8a8": ("quanto",)},
}
"""The order `backend=auto` tries, per device type and bit-width: the first that can run
here is chosen. CUDA: gemlite's Triton GEMV first (it reads the packed weights once, where
quanto's int8 dequantizes a bf16 copy a call: 0.20x of bf16 at 7B batch 1 in docs/benchmarks.md
run D), then quanto's kernels that run D measured (tinygemm int4 1.34x, Marlin fp8 1.00x),
then torchao (eagerly the same dequantize-and-matmul for int8, tinygemm for int4), then
bitsandbytes. benchmarks/quant_backends.py measures them side by side; this order follows
its result. CPU: quanto (the kernels the project's CPU figures were taken with:
`_weight_int8pack_mm` in bf16, tinygemm's CPU int4), then torchao's int8 and bitsandbytes'
torch fallbacks; gemlite has no CPU path."""


STEP_COMPILES = frozenset({"gemlite"})
"""Backends whose quantized linears inductor traces (gemlite's Triton kernels are custom ops
with fake implementations), so the runner's `fused` engine compiles the whole decode step
around them, norms, rotary and residuals fused between the matmuls. quanto's and torchao's
tensor subclasses did not compile there (docs/benchmarks.md run Q1), and bitsandbytes'
outlier split breaks the graph: they run the lean step uncompiled. A compile that fails
falls back to the uncompiled step with the reason in the run's info."""

def _found(module: str) -> bool:
    """Whether `module` can be imported (a dotted name whose parent package is missing
    makes find_spec raise, not return None)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def installed(backend: str) -> bool:
    return _found(PACKAGES[backend][0])


def why_not(backend: str, bits: str, device: str, dtype: torch.dtype) -> str | None:
    """Why `backend` cannot quantize to `bits` and run on `device` in `dtype` (None: it can),
    found without importing the backend. Shape limits show only when quantizing."""
    module, dist = PACKAGES[backend]
    if not _found(module):
        return f"needs {dist}, which is not installed here (pip install {dist})"
    cuda = device.startswith("cuda")
    dtype_name = str(dtype).removeprefix("torch.")
    if backend == "torchao":
        if bits == "int4" and not cuda:
            return (f"torchao's int4 runs the tinygemm layout, which needs a CUDA device "
                    f"(got {device})")
        if bits == "int4" and dtype != torch.bfloat16:
            return f"torchao's int4 (tinygemm) computes in bfloat16, not {dtype_name}"
        if bits == "fp8" and not _capability_at_least(device, (8, 9)):
            return ("torchao's fp8 runs torch._scaled_mm, which needs a CUDA device of compute "
                    f"capability 8.9 or newer (got {_device_name(device)})")
    elif backend == "gemlite":
        if not cuda:
            return f"gemlite's kernels are Triton GPU kernels and need a CUDA device (got {device})"
        if not _found("triton"):
            return "gemlite needs triton, which is not installed here"
        if dtype not in (torch.float16, torch.bfloat16):
            return f"gemlite takes float16 or bfloat16 activations, not {dtype_name}"
        if bits == "fp8" and not _capability_at_least(device, (8, 9)):
            return ("gemlite's fp8 weights need compute capability 8.9 or newer (got "
                    f"{_device_name(device)})")
    return None


def tuning_file(home: Path, device: str) -> Path:
    """Where gemlite's kernel choices for this GPU are kept between runs:
    `<home>/kernel_tuning/gemlite-<gpu name>.json`. gemlite autotunes every matmul shape
    its shipped config for the card lacks (minutes a model on an H200 without one,
    docs/benchmarks.md run Q1); kept, only the first run of a shape pays it, and always
    outside the measured window (the engine's warm-up)."""
    return home / "kernel_tuning" / _tuning_name(device)


def _tuning_name(device: str) -> str:
    """`gemlite-<gpu name>.json` for the GPU of `device` (`cpu` without CUDA)."""
    name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() \
        else "cpu"
    slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    return f"gemlite-{slug}.json"


def shipped_tuning_file(device: str) -> Path:
    """Kernel choices measured for this GPU that ship with the package
    (`efficientllm_data/kernel_tuning/gemlite-<gpu name>.json`, where one was committed)."""
    import efficientllm_data

    return Path(str(efficientllm_data.__file__)).parent / "kernel_tuning" / _tuning_name(device)


def load_tuning(backend: str, home: Path | None, device: str) -> bool:
    """Load kernel choices for `backend` (gemlite only): the shipped ones for this GPU, then
    the ones kept in the home (merged over them); whether any file was loaded."""
    if backend != "gemlite" or not device.startswith("cuda"):
        return False
    paths = [shipped_tuning_file(device)] + ([tuning_file(home, device)] if home else [])
    found = [p for p in paths if p.is_file()]
    if not found:
        return False
    import gemlite

    return any([bool(gemlite.load_config(str(p), print_error=False)) for p in found])


def save_tuning(backend: str, home: Path | None, device: str) -> Path | None:
    """Keep this process's kernel choices for `backend` (merged into the file); its path,
    or None when there is nothing to keep. Never fails a run: a file it cannot write is
    only a slower next start."""
    if backend != "gemlite" or home is None or not device.startswith("cuda"):
        return None
    path = tuning_file(home, device)
    try:
        import gemlite

        path.parent.mkdir(parents=True, exist_ok=True)
        gemlite.cache_config(str(path))
    except Exception:  # noqa: BLE001 - a cache, not a result
        return None
    return path

def _capability_at_least(device: str, need: tuple[int, int]) -> bool:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(torch.device(device))) >= need


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return f"{device}, capability {major}.{minor}"
    return device


# -- quantizing -------------------------------------------------------------------------------

Keep = Callable[[str], bool]
"""Whether the linear layer of this qualified name is quantized (exclusions applied)."""


def _linears(model: torch.nn.Module, keep: Keep) -> list[tuple[torch.nn.Module, str, str,
                                                                torch.nn.Linear]]:
    """(parent, attribute, qualified name, layer) of each plain linear layer to quantize."""
    out = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}" if parent_name else attr
            if type(child) is torch.nn.Linear and keep(name):
                out.append((parent, attr, name, child))
    return out


def quantize(backend: str, model: torch.nn.Module, technique: str, bits: str,
             group_size: int | None, keep: Keep) -> None:
    """Quantize `model`'s linear layers in place with `backend` (not quanto: the caller's)."""
    fn = {"torchao": _torchao, "gemlite": _gemlite, "bnb": _bnb}[backend]
    try:
        fn(model, bits, group_size, keep)
    except Unsupported:
        raise
    except ImportError as e:  # a kernel package a layout needs, or a broken install
        raise Unsupported(f"{technique}: {backend}'s {bits} layout needs a package that is "
                          f"not installed here: {one_line(e)}") from None
    except (RuntimeError, NotImplementedError, ValueError, AssertionError, TypeError) as e:
        if is_oom(e):
            raise
        raise Unsupported(f"{technique}: {backend} cannot quantize this model here: "
                          f"{one_line(e)}") from None


def _torchao(model: torch.nn.Module, bits: str, group_size: int | None, keep: Keep) -> None:
    from torchao.quantization import quantize_

    config = torchao_config(bits, group_size)

    def only_linears(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and keep(fqn)

    quantize_(model, config, filter_fn=only_linears)


def torchao_config(bits: str, group_size: int | None) -> Any:
    """The torchao config object for `bits` (torchao >= 0.10 class API, or the older
    factory functions where this torchao has no class)."""
    import torchao.quantization as tq

    if bits == "int8":
        names: tuple[tuple[str, dict[str, Any]], ...] = (
            ("Int8WeightOnlyConfig", {}), ("int8_weight_only", {}))
    elif bits == "int4":
        names = (("Int4WeightOnlyConfig", {"group_size": group_size,
                                           "int4_packing_format": "tile_packed_to_4d"}),
                 ("int4_weight_only", {"group_size": group_size}))
    else:
        from torchao.quantization import PerRow

        names = (("Float8DynamicActivationFloat8WeightConfig", {"granularity": PerRow()}),)
    for name, kwargs in names:
        factory = getattr(tq, name, None)
        if factory is not None:
            return factory(**kwargs)
    raise Unsupported(f"this torchao has none of {', '.join(n for n, _ in names)}")


def _gemlite(model: torch.nn.Module, bits: str, group_size: int | None, keep: Keep) -> None:
    from gemlite.helper import A16W8_FP8, A16W8_INT8, A16Wn

    for parent, attr, name, layer in _linears(model, keep):
        weight = layer.weight.data
        device, dtype = weight.device, weight.dtype
        if bits == "int8":
            new = A16W8_INT8(device=device, dtype=dtype).from_linear(layer)
        elif bits == "fp8":
            new = A16W8_FP8(device=device, dtype=dtype).from_linear(layer)
        else:
            assert group_size is not None
            if layer.in_features % group_size:
                raise Unsupported(f"gemlite int4: {name} has {layer.in_features} inputs, not a "
                                  f"multiple of the group size {group_size}")
            q, scale, zero = rtn_asymmetric(weight, 4, group_size)
            bias = None if layer.bias is None else layer.bias.data
            new = A16Wn(device=device, dtype=dtype).from_weights(
                q, scale, zero, W_nbits=4, group_size=group_size, bias=bias)
        setattr(parent, attr, new)


def rtn_asymmetric(weight: torch.Tensor, nbits: int, group_size: int,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric quantization of `weight` [out, in] in groups of
    `group_size` inputs: (codes uint8 [out, in], scale, zero [out, in / group]) with
    `weight ~= (codes - zero) * scale` (the HQQ/gemlite layout), scale and zero in the
    weight's dtype."""
    out_f, in_f = weight.shape
    w = weight.float().reshape(out_f, in_f // group_size, group_size)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    top = 2 ** nbits - 1
    scale = ((high - low) / top).clamp(min=1e-8)
    zero = -low / scale
    codes = (w / scale + zero).round().clamp(0, top).to(torch.uint8).reshape(out_f, in_f)
    return codes, scale[..., 0].to(weight.dtype), zero[..., 0].to(weight.dtype)


BNB_INT8_THRESHOLD = 6.0
"""LLM.int8()'s outlier threshold (transformers' `llm_int8_threshold` default)."""
BNB_4BIT_BLOCK = 64
"""Values sharing one NF4 absmax (bitsandbytes' and transformers' default blocksize)."""


def _bnb(model: torch.nn.Module, bits: str, group_size: int | None, keep: Keep) -> None:
    import bitsandbytes as bnb

    for parent, attr, _, layer in _linears(model, keep):
        weight = layer.weight.data
        device, dtype = weight.device, weight.dtype
        has_bias = layer.bias is not None
        if bits == "int8":
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=has_bias,
                                      has_fp16_weights=False, threshold=BNB_INT8_THRESHOLD,
                                      device=device)
            param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            new.weight = param._quantize(device)
            scales = new.weight.SCB
        else:
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=has_bias,
                                    compute_dtype=dtype, quant_type="nf4",
                                    quant_storage=torch.uint8, device=device)
            param = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                      blocksize=group_size or BNB_4BIT_BLOCK,
                                      compress_statistics=False, quant_storage=torch.uint8,
                                      module=new)
            new.weight = param._quantize(device)
            scales = new.weight.quant_state.absmax
        if has_bias:
            new.bias = torch.nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
        # The scales live beside the packed data, out of parameters(); a non-persistent
        # buffer (the same tensor, no copy) puts their bytes into the model's stored size.
        new.register_buffer("weight_scales", scales, persistent=False)
        setattr(parent, attr, new)


# -- what ran ---------------------------------------------------------------------------------

QUANTIZED_MODULES = {"GemLiteLinearTriton": "gemlite", "Linear8bitLt": "bnb",
                     "Linear4bit": "bnb"}
"""Layer classes that replace `nn.Linear` (class name -> backend): gemlite and bitsandbytes
swap the module, where quanto swaps its class and torchao its weight tensor."""


def module_kind(module: torch.nn.Module) -> str | None:
    """The class name of a quantized layer module of gemlite or bitsandbytes, else None."""
    name = type(module).__name__
    backend = QUANTIZED_MODULES.get(name)
    if backend is None:
        return None
    home = type(module).__module__.split(".")[0]
    return name if home == PACKAGES[backend][0] else None


def kernel(name: str, module: torch.nn.Module | None, weight: torch.Tensor | None,
           device_type: str) -> str | None:
    """The matmul a torchao weight class or a gemlite / bitsandbytes layer runs; None for
    a class this module does not know."""
    compute = str(weight.dtype).removeprefix("torch.") if weight is not None else "16-bit"
    if name == "Int8Tensor":
        return (f"torchao int8 weight-only: int8 -> {compute} cast + matmul + row scale "
                "(one fused kernel only under torch.compile)")
    if name == "Int4TilePackedTo4dTensor":
        return "torch._weight_int4pack_mm (tinygemm int4 x bf16), via torchao"
    if name == "Float8Tensor":
        return ("torch._scaled_mm fp8 x fp8 (activations quantized per row at run time), "
                "via torchao")
    if name == "GemLiteLinearTriton" and module is not None:
        wbits = getattr(module, "W_nbits", "?")
        return (f"gemlite Triton A16W{wbits}: GEMV up to {4 if wbits != 8 else 2} rows, "
                "split-K GEMM under 64, GEMM above")
    if name == "Linear8bitLt":
        return ("bitsandbytes LLM.int8(): int8 x int8 matmul, activations quantized per row, "
                f"outlier columns (> {BNB_INT8_THRESHOLD}) in 16-bit")
    if name == "Linear4bit":
        where = "CUDA" if device_type == "cuda" else "CPU torch fallback"
        return (f"bitsandbytes NF4 ({where}): 4-bit GEMV at one row, dequantize + matmul "
                "above")
    return None
