"""Fine-tuning techniques as recipes over peft: which weights train, the adapter config, the
optimizer, and how the result is saved. Nothing here reimplements a method; each is peft's
own config (LoRA and its variants, IA3, VeRA, LoHa, LoKr, AdaLoRA, prompt tuning) or plain
`requires_grad` choices (full, freeze), plus optimum-quanto for the QLoRA base.

The paper's arms (EfficientLLM, arXiv 2505.13840, section 5) share rank 64, alpha 128,
dropout 0.1 on every linear layer; the beyond-the-paper arms take the same numbers where
they have them. `Hyper` holds those numbers; `prepare` applies one technique to a built
model and returns what the training loop needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from runners.errors import BadInput, Unsupported
from runners.params import parse_targets

Kind = Literal["full", "freeze", "peft"]


@dataclass(frozen=True, slots=True)
class Method:
    """One fine-tuning technique."""

    id: str
    kind: Kind
    default_lr: float
    """Learning rate when `--set lr` is not given (peak of the cosine schedule)."""
    quantized_base: bool = False
    """The frozen base is quantized to int4 with optimum-quanto before the adapter goes on."""


_LORA_LR = 1e-4
METHODS: dict[str, Method] = {m.id: m for m in (
    Method("full", "full", 1e-5),
    Method("freeze", "freeze", 5e-5),
    Method("lora", "peft", _LORA_LR),
    Method("lora-plus", "peft", _LORA_LR),
    Method("rslora", "peft", _LORA_LR),
    Method("dora", "peft", _LORA_LR),
    Method("pissa", "peft", _LORA_LR),
    Method("olora", "peft", _LORA_LR),
    Method("ia3", "peft", 3e-3),
    Method("vera", "peft", 3e-3),
    Method("loha", "peft", _LORA_LR),
    Method("lokr", "peft", _LORA_LR),
    Method("adalora", "peft", _LORA_LR),
    Method("prompt-tuning", "peft", 3e-2),
    Method("qlora", "peft", _LORA_LR, quantized_base=True),
)}
"""Every technique of the `finetuning` family, by catalog id."""

DEFAULT_FREEZE_K = 2
"""`freeze` trains the last 2 decoder blocks: LLaMA-Factory's `freeze_trainable_layers`
default, the harness the paper's fine-tuning runs used."""


@dataclass(frozen=True, slots=True)
class Hyper:
    """Technique hyper-parameters (each a `--set` parameter of the finetuning family)."""

    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.1
    target_modules: str = "all-linear"
    """`all-linear` (peft: every nn.Linear but the output layer) or comma-separated names."""
    freeze_k: int = DEFAULT_FREEZE_K
    loraplus_ratio: float = 16.0
    pissa_niter: int = 4
    """Subspace iterations of PiSSA's fast SVD; 0 runs the exact SVD."""
    virtual_tokens: int = 20
    adalora_init_r: int | None = None
    """AdaLoRA's starting rank per matrix; default 1.5 x rank (peft's 12 -> 8 ratio)."""
    total_steps: int = 1
    """Optimizer steps of the whole run (AdaLoRA's budget schedule needs it)."""


@dataclass
class Prepared:
    """A model ready to train under one technique."""

    model: Any
    """What the step calls: a peft wrapper, or the transformers model itself."""
    lm: Any
    """The transformers causal LM inside (`lm_head`, gradient checkpointing, saving)."""
    method: Method
    make_optimizer: Callable[..., torch.optim.Optimizer]
    """(lr, weight_decay, device, params=None) -> optimizer over the trainable parameters
    (or over `params`, e.g. their fp32 master copies)."""
    after_backward: Callable[[int], None] | None = None
    """Called with the 0-based optimizer step after the backward passes (AdaLoRA)."""
    adapter_config: dict[str, Any] = field(default_factory=dict)
    """The peft config as a dict, for the run's info; empty for full and freeze."""

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def method(technique: str) -> Method:
    found = METHODS.get(technique)
    if found is None:
        raise Unsupported(f"technique {technique!r} is not a fine-tuning technique here")
    return found


def decoder_blocks(lm: Any) -> Any:
    """The ModuleList of decoder blocks of a transformers causal LM."""
    inner = getattr(lm, "model", None)
    blocks = getattr(inner, "layers", None)
    if blocks is None:
        raise Unsupported(f"cannot find the decoder blocks of {type(lm).__name__}")
    return blocks


def quantize_base(lm: Any, device: str = "cpu",
                  on_phase: Callable[..., None] | None = None) -> dict[str, Any]:
    """Quantize every linear layer but the output head to int4 with optimum-quanto, in
    place, and freeze the quantized weights (QLoRA's frozen base). Returns facts to report.

    On CUDA, quanto's backward pass through an int4 weight unpacks it with quanto's own
    CUDA kernels, which torch builds (ninja + nvcc) the first time they are used: seen on
    an H100 machine (2026-11-27), that first backward sat in the build for over a minute.
    So the build happens here, in the load phase, announced as its own phase, instead of
    inside the first training step; a build that fails makes the run `unsupported`.
    """
    try:
        from optimum import quanto
    except ImportError as e:
        raise Unsupported(f"qlora needs optimum-quanto, which is not importable here ({e})") \
            from None
    quanto.quantize(lm, weights=quanto.qint4, exclude=["lm_head"])
    quanto.freeze(lm)
    lm.requires_grad_(False)
    facts: dict[str, Any] = {"quantizer": "optimum-quanto", "weights": "qint4",
                             "excluded": ["lm_head"]}
    if device.startswith("cuda"):
        facts["cuda_kernels"] = _quanto_cuda_kernels(on_phase)
    return facts


def _quanto_cuda_kernels(on_phase: Callable[..., None] | None) -> str:
    """Build (or load the cached build of) optimum-quanto's CUDA extension."""
    import time

    from optimum.quanto.library.extensions import get_extension, is_extension_available

    if not is_extension_available("quanto_cuda"):
        return "not registered"
    ext = get_extension("quanto_cuda")
    built = Path(ext.build_directory, "pytorch_version.txt")
    cached = built.is_file() and built.read_text().strip() == torch.__version__
    if not cached and on_phase is not None:
        on_phase("compile_kernels", what="optimum-quanto CUDA extension (first use: minutes)",
                 build_dir=ext.build_directory)
    t0 = time.monotonic()
    try:
        ext.lib  # noqa: B018 - the property builds or loads the extension
    except Exception as e:  # noqa: BLE001 - any build failure means no qlora here
        from runners.errors import one_line

        raise Unsupported(f"qlora on CUDA needs optimum-quanto's CUDA kernels (its backward "
                          f"pass unpacks the int4 weights with them), and building them "
                          f"failed: {one_line(e)}") from None
    return "cached" if cached else f"built in {time.monotonic() - t0:.0f}s"


def _adamw_factory(model: Any) -> Callable[..., torch.optim.Optimizer]:
    from runners.engines.training import adamw

    def make(lr: float, weight_decay: float, device: str,
             params: list[torch.Tensor] | None = None) -> torch.optim.Optimizer:
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        return adamw(params, lr=lr, weight_decay=weight_decay, device=device)

    return make


def _peft_config(m: Method, h: Hyper) -> Any:
    import peft

    targets = parse_targets(h.target_modules)
    lora = dict(task_type="CAUSAL_LM", r=h.rank, lora_alpha=h.alpha, lora_dropout=h.dropout,
                target_modules=targets)
    if m.id in ("lora", "lora-plus", "qlora"):
        return peft.LoraConfig(**lora)
    if m.id == "rslora":
        return peft.LoraConfig(**lora, use_rslora=True)
    if m.id == "dora":
        return peft.LoraConfig(**lora, use_dora=True)
    if m.id == "pissa":
        init = "pissa" if h.pissa_niter <= 0 else f"pissa_niter_{h.pissa_niter}"
        return peft.LoraConfig(**lora, init_lora_weights=init)
    if m.id == "olora":
        return peft.LoraConfig(**lora, init_lora_weights="olora")
    if m.id == "adalora":
        init_r = h.adalora_init_r or max(h.rank, round(1.5 * h.rank))
        return peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=init_r, target_r=h.rank,
                                  lora_alpha=h.alpha, lora_dropout=h.dropout,
                                  target_modules=targets, total_step=max(2, h.total_steps))
    if m.id == "ia3":
        ff = ["down_proj"] if targets == "all-linear" else [t for t in targets
                                                           if t.endswith("down_proj")]
        return peft.IA3Config(task_type="CAUSAL_LM", target_modules=targets,
                              feedforward_modules=ff)
    if m.id == "vera":
        return peft.VeraConfig(task_type="CAUSAL_LM", r=h.rank, vera_dropout=h.dropout,
                               target_modules=targets)
    if m.id == "loha":
        return peft.LoHaConfig(task_type="CAUSAL_LM", r=h.rank, alpha=h.alpha,
                               rank_dropout=h.dropout, target_modules=targets)
    if m.id == "lokr":
        return peft.LoKrConfig(task_type="CAUSAL_LM", r=h.rank, alpha=h.alpha,
                               rank_dropout=h.dropout, target_modules=targets)
    if m.id == "prompt-tuning":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                       num_virtual_tokens=h.virtual_tokens)
    raise AssertionError(f"no peft config for {m.id}")


def _jsonable(config: Any) -> dict[str, Any]:
    out = {}
    for key, value in config.to_dict().items():
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        try:
            json.dumps(value)
        except TypeError:
            value = repr(value)
        out[key] = value
    return out


def prepare(technique: str, lm: Any, hyper: Hyper, *, adapter_dtype_fp32: bool = True
            ) -> Prepared:
    """Make `lm` (a transformers causal LM, gradients off) trainable under `technique`.

    Args:
        adapter_dtype_fp32: keep trained weights in float32 (autocast mixed precision) even
            when the base is bf16: peft's adapters, and `freeze`'s blocks; False keeps them
            in the base dtype (`bf16-pure`, or bf16 with fp32 master copies outside).
    """
    m = method(technique)
    if m.kind == "full":
        lm.requires_grad_(True)
        return Prepared(lm, lm, m, _adamw_factory(lm))
    if m.kind == "freeze":
        blocks = decoder_blocks(lm)
        if not 1 <= hyper.freeze_k <= len(blocks):
            raise BadInput(f"freeze_k must be within 1..{len(blocks)} (the model's blocks), "
                           f"got {hyper.freeze_k}")
        for block in blocks[len(blocks) - hyper.freeze_k:]:
            for p in block.parameters():
                if adapter_dtype_fp32 and p.dtype != torch.float32:
                    p.data = p.data.float()
                p.requires_grad_(True)
        return Prepared(lm, lm, m, _adamw_factory(lm))

    import peft

    config = _peft_config(m, hyper)
    try:
        model = peft.get_peft_model(lm, config, autocast_adapter_dtype=adapter_dtype_fp32)
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError) as e:
        if m.quantized_base:
            raise Unsupported(f"peft {peft.__version__} could not wrap the optimum-quanto int4 "
                              f"base: {type(e).__name__}: {e}") from None
        raise BadInput(f"{technique}: peft rejected the configuration: {e}") from None
    # Under autocast the adapter matmuls run in bf16 anyway; skipping peft's cast of the
    # input to the adapter's float32 saves a copy of every adapted activation.
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
    make_optimizer = _adamw_factory(model)
    after_backward = None
    if m.id == "lora-plus":
        make_optimizer = _loraplus_factory(model, hyper.loraplus_ratio)
    elif m.id == "adalora":
        after_backward = model.base_model.update_and_allocate
    return Prepared(model, model.get_base_model(), m, make_optimizer, after_backward,
                    _jsonable(config))


def _loraplus_factory(model: Any, ratio: float) -> Callable[..., torch.optim.Optimizer]:
    def make(lr: float, weight_decay: float, device: str,
             params: list[torch.Tensor] | None = None) -> torch.optim.Optimizer:
        if params is not None:
            raise ValueError("LoRA+ groups the model's own adapter weights")
        from peft.optimizers import create_loraplus_optimizer

        cuda = device.startswith("cuda")
        extra: dict[str, Any] = {"fused": True} if cuda else {"foreach": True}
        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr,
                                         loraplus_lr_ratio=ratio,
                                         loraplus_weight_decay=weight_decay, **extra)

    return make


def first_trained_block(model: Any, n_blocks: int) -> int:
    """Index of the lowest decoder block the backward pass must reach: the lowest block
    holding a trainable weight; 0 when embeddings or a soft prompt train; `n_blocks` when
    only the head or final norm does."""
    first = n_blocks
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        found = re.search(r"\blayers\.(\d+)\.", name)
        if found:
            first = min(first, int(found.group(1)))
        elif "embed" in name or "prompt" in name:
            return 0
    return first


def save(prepared: Prepared, directory: Path) -> list[str]:
    """Write what was trained under `directory`; returns the file names written.

    peft techniques: the adapter (`save_pretrained`); freeze: the trained blocks as
    safetensors; full: the whole model (`save_pretrained`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    m = prepared.method
    if m.kind == "freeze":
        from safetensors.torch import save_file

        tensors = {n: p.detach().to("cpu").contiguous()
                   for n, p in prepared.model.named_parameters() if p.requires_grad}
        save_file(tensors, str(directory / "trainable.safetensors"))
        (directory / "freeze.json").write_text(json.dumps(
            {"technique": m.id, "tensors": sorted(tensors)}, indent=1) + "\n")
    else:
        prepared.model.save_pretrained(str(directory), safe_serialization=True)
    return sorted(p.name for p in directory.iterdir())


def restore(prepared: Prepared, directory: Path) -> list[str]:
    """Load what `save` wrote under `directory` into a model prepared the same way (same
    technique, hyperparameters and seed); returns the file names read.

    Raises:
        Unsupported: Nothing saved there, or it does not fit the prepared model.
    """
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        raise Unsupported(f"nothing trained is saved in {directory} (the run had save=false, "
                          "or its run dir was removed)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    if prepared.method.kind in ("freeze", "full"):
        result = prepared.model.load_state_dict(tensors, strict=False)
        if result.unexpected_keys or (prepared.method.kind == "full" and any(
                k for k in result.missing_keys if not k.endswith("lm_head.weight"))):
            raise Unsupported(f"{directory} does not fit this model (unexpected "
                              f"{result.unexpected_keys[:3]}, missing {result.missing_keys[:3]})")
    else:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(prepared.model, tensors)
        if getattr(result, "unexpected_keys", None):
            raise Unsupported(f"{directory} does not fit this adapter (unexpected "
                              f"{result.unexpected_keys[:3]})")
    return [f.name for f in files]


def hyper_dict(h: Hyper) -> dict[str, Any]:
    return asdict(h)
