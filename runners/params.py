"""The `--set` parameters of every family (type, default, choices, range, one-line doc), and
the rules that tie parameters, techniques and model cards together: the one source both the
launcher (before a runner starts) and the runners' family configs (on construction) check.

Standard library only (with runners.protocol and runners.errors), so the app can refuse bad
input at once without loading torch; the family configs in runners.families.inference,
runners.families.finetuning_config and runners.families.pretraining_config validate through these
functions,
and a unit test keeps their fields and this table identical.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runners.errors import BadInput
from runners.protocol import ParamValue, ProtocolError, coerce_param


@dataclass(frozen=True, slots=True)
class Param:
    """One `--set` parameter of one family."""

    name: str
    kind: type
    """What a `--set` value is coerced to: bool, int, float or str."""
    default: ParamValue | None
    """The value when not set; None where the runner works it out (the reason is the doc)."""
    doc: str
    """One line: what it changes."""
    choices: tuple[str, ...] = ()
    """Allowed values of a str parameter (compared lower-cased); empty: any string."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Other spellings accepted for a choice (`true` -> `layers`)."""
    low: float | None = None
    """Smallest allowed number (exclusive when `low_open`)."""
    low_open: bool = False
    high: float | None = None
    """Largest allowed number (exclusive when `high_open`)."""
    high_open: bool = False
    also: tuple[int | float, ...] = ()
    """Values allowed outside [low, high] (eval_tokens' 0: skip the evaluation)."""
    parse: Callable[[str], Any] | None = None
    """A str parameter's own check, raising BadInput (target_modules)."""

    def check(self, value: Any) -> Any:
        """`value` in canonical form (choices lower-cased, aliases resolved); BadInput naming
        the parameter when it is out of its choices or range."""
        if value is None:
            if self.default is None:
                return None
            raise BadInput(f"{self.name} needs a value")
        if self.choices:
            text = str(value).strip().lower()
            text = self.aliases.get(text, text)
            if text not in self.choices:
                extra = f"; or {'/'.join(self.aliases)}" if self.aliases else ""
                raise BadInput(f"unknown {self.name} {value!r} (choose from "
                               f"{', '.join(self.choices)}{extra})")
            return text
        if self.parse is not None:
            self.parse(str(value))
        if self.kind in (int, float) and value not in self.also and not self._in_range(value):
            raise BadInput(f"{self.name} must be {self.range_text()}, got {value!r}")
        return value

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else
                                     value <= self.high)

    def range_text(self) -> str:
        """The allowed numbers in words: `at least 1`, `positive`, `within [0, 1)`."""
        if self.low is not None and self.high is not None:
            text = (f"within {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = ("positive" if self.low == 0 and self.low_open else
                    f"greater than {_num(self.low)}" if self.low_open else
                    f"at least {_num(self.low)}")
        elif self.high is not None:
            text = f"{'below' if self.high_open else 'at most'} {_num(self.high)}"
        else:
            text = "any number"
        if self.also:
            text += f" (or {', '.join(_num(v) for v in self.also)})"
        return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_TARGET_NAME = re.compile(r"[A-Za-z0-9_.]+")


def parse_targets(value: str) -> str | list[str]:
    """`all-linear` stays as is; `q_proj, v_proj` -> ['q_proj', 'v_proj']."""
    text = value.strip()
    if text in ("all-linear", "all"):
        return "all-linear"
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or not all(_TARGET_NAME.fullmatch(n) for n in names):
        raise BadInput(f"target_modules must be 'all-linear' or comma-separated module names, "
                       f"got {value!r}")
    return names


_TASK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_quality(value: str) -> list[str]:
    """`off`/`none` -> []; `suite, mmlu_pro` -> ['suite', 'mmlu_pro'] (names lm-eval
    resolves at run time: an unknown one is an `unsupported` note, not a failed run)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not all(_TASK_NAME.fullmatch(n) for n in names):
        raise BadInput(f"quality must be off, suite or comma-separated lm-eval task names, "
                       f"got {value!r}")
    return [n for n in names if n.lower() not in ("off", "none")]


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_run_id(value: str) -> str:
    """A run id as RunSpec accepts it."""
    if not _RUN_ID.fullmatch(value.strip()):
        raise BadInput(f"score_of must be a run id, got {value!r}")
    return value.strip()


def _p(name: str, kind: type, default: ParamValue | None, doc: str, **kw: Any) -> Param:
    return Param(name, kind, default, doc, **kw)


_POSITIVE = {"low": 0, "low_open": True}
_FRACTION = {"low": 0, "high": 1, "high_open": True}
_EVAL_TOKENS = {"low": 2, "also": (0,)}

_QUALITY = (
    _p("quality", str, "off", "lm-eval tasks scored after the measured window: off, suite or "
       "task names", parse=parse_quality),
    _p("quality_items", int, 50, "items per quality task (suite: generated; other tasks: "
       "their first N)", low=1),
    _p("score_of", str, None, "set by `efficientllm eval`: score this stored run's model, "
       "cost not measured", parse=parse_run_id),
)
"""Task scoring after the measured window (inference: the measured model; fine-tuning: the
adapted model, and the base model once per cache key)."""

QUANT_BACKEND_NAMES = ("quanto", "torchao", "gemlite", "bnb")
"""Weight-quantization backends (runners.techniques.quant_backends)."""
QUANT_BACKENDS: dict[str, tuple[str, ...]] = {
    "int8": QUANT_BACKEND_NAMES, "int4": QUANT_BACKEND_NAMES,
    "fp8": ("quanto", "torchao", "gemlite"), "w8a8": ("quanto",),
    "int8-ao": ("torchao",), "int4-ao": ("torchao",)}
"""Inference technique -> the backends that serve it (`--set backend`): bitsandbytes' 4-bit
is NF4; w8a8 is quanto's calibrated static activations only; `-ao` ids are torchao's."""

VISION_TASKS = ("vqa", "captioning")
"""Inference tasks of vision-language models (runners.families.vision)."""

INFERENCE = (
    _p("task", str, "decode", "decode (text prompts), or vqa / captioning (vision-language "
       "models: image + prompt in)",
       choices=("decode", *VISION_TASKS)),
    _p("engine", str, "auto", "decode engine; auto tries the device's defaults in order",
       choices=("auto", "loop", "eager", "static", "graph", "compile", "fused")),
    _p("compile_mode", str, "default", "torch.compile mode of engine=compile and fused "
       "(none: fused uncompiled)", choices=("default", "max-autotune-no-cudagraphs", "none")),
    _p("dtype", str, "auto", "compute dtype of quantized techniques; auto: bf16 on CUDA, fp32 "
       "on CPU", choices=("auto", "fp32", "bf16", "fp16")),
    _p("backend", str, "auto", "library that quantizes and runs the weights; auto: the "
       "device's first that can run it", choices=("auto", *QUANT_BACKEND_NAMES),
       aliases={"bitsandbytes": "bnb", "optimum-quanto": "quanto"}),
    _p("exclude", str, "lm_head", "comma-separated module patterns left unquantized; none "
       "quantizes every linear"),
    _p("mcr_reference", str, "auto", "dtype of the uncompressed MCR reference; auto: bf16 on "
       "CUDA, fp32 on CPU", choices=("auto", "bf16", "fp32", "none")),
    _p("calibration_tokens", int, 1024, "tokens run through the model to calibrate "
       "activation scales (w8a8)", low=2),
    _p("peak_tflops", float, None, "dense peak of the device in TFLOP/s for mfu; unset: no "
       "mfu", **_POSITIVE),
    _p("mem_bw_gbps", float, None, "memory bandwidth in GB/s for roofline_fraction; unset: "
       "not computed", **_POSITIVE),
    _p("threads", int, None, "torch intra-op threads; unset: one fewer than the usable CPUs",
       low=1),
    _p("eval_tokens", int, 512, "held-out tokens scored for eval_ppl; 0 skips it (and MCR)",
       **_EVAL_TOKENS),
    *_QUALITY,
    _p("phase_windows", bool, True, "also replay the measured prefills in a prefill window"),
    _p("trust_remote_code", bool, False, "let a local model dir run its own code"),
    _p("quantize_vision", bool, False, "vqa/captioning: quantize the vision tower and "
       "projector too (default: language model only)"),
)

FINETUNING = (
    _p("rank", int, 64, "adapter rank (LoRA family, VeRA, LoHa, LoKr; AdaLoRA's target)",
       low=1),
    _p("alpha", float, 128.0, "LoRA alpha (scale alpha / rank)", **_POSITIVE),
    _p("dropout", float, 0.1, "adapter dropout", **_FRACTION),
    _p("target_modules", str, "all-linear", "all-linear or comma-separated module names the "
       "adapters wrap", parse=parse_targets),
    _p("freeze_k", int, 2, "freeze: how many of the last decoder blocks train", low=1),
    _p("loraplus_ratio", float, 16.0, "lora-plus: learning rate of B over that of A", low=1),
    _p("pissa_niter", int, 4, "pissa: fast-SVD iterations; 0 for the exact SVD", low=0),
    _p("virtual_tokens", int, 20, "prompt-tuning: soft prompt length", low=1),
    _p("adalora_init_r", int, None, "adalora: starting rank (at least rank); unset: 1.5 x "
       "rank", low=1),
    _p("lr", float, None, "peak learning rate; unset: per technique (1e-4 LoRA family, 1e-5 "
       "full)", **_POSITIVE),
    _p("weight_decay", float, 0.0, "AdamW weight decay", low=0),
    _p("lr_warmup_ratio", float, 0.1, "share of the optimizer steps in the linear warm-up",
       **_FRACTION),
    _p("min_lr_ratio", float, 0.0, "floor of the cosine decay, a share of the peak", low=0,
       high=1),
    _p("max_grad_norm", float, 1.0, "gradient clipping threshold; 0 disables it", low=0),
    _p("grad_accum", int, 1, "micro-batches per optimizer step", low=1),
    _p("grad_ckpt", bool, False, "activation checkpointing of the decoder blocks"),
    _p("precision", str, "auto", "auto (bf16 on a bf16 GPU, else fp32), fp32, bf16 or "
       "bf16-pure", choices=("auto", "fp32", "bf16", "bf16-pure")),
    _p("packing", bool, True, "pack examples end to end into full rows (no padding)"),
    _p("loss_chunk_rows", int, None, "rows per cross-entropy chunk; 0: unchunked; unset: "
       "about 1 GiB of logits", low=0),
    _p("loss_kernel", str, "auto", "loss: liger (liger-kernel fused linear CE, CUDA), torch "
       "(chunked), auto (liger where it runs)", choices=("auto", "liger", "torch")),
    _p("eval_batches", int, 4, "held-out micro-batches scored for eval_loss; 0 skips it",
       low=0),
    _p("heldout_fraction", float, 0.1, "share of the dataset's examples held out",
       **_FRACTION),
    _p("save", bool, True, "save what was trained under RUN_DIR/adapter/"),
    _p("sharding", str, "auto", "several devices: ddp, fsdp2 (fully_shard), or auto (fsdp2 "
       "where one GPU cannot hold the weights)", choices=("auto", "ddp", "fsdp2")),
    *_QUALITY,
    _p("compile", str, "auto", "torch.compile: layers, model, off, or auto (layers on CUDA for "
       "the measured techniques)", choices=("auto", "off", "layers", "model"),
       aliases={"true": "layers", "on": "layers", "yes": "layers", "1": "layers",
                "false": "off", "no": "off", "0": "off", "none": "off"}),
    _p("peak_tflops", float, None, "dense bf16 peak in TFLOP/s for mfu; unset: measured on the "
       "GPU", **_POSITIVE),
    _p("threads", int, None, "torch intra-op threads; unset: one fewer than the usable CPUs",
       low=1),
    _p("vlm_targets", str, "language", "VLMs: adapters on the language model, the projector, "
       "or both", choices=("language", "projector", "both")),
    _p("vlm_task", str, "captioning", "VLMs: train on the image set's captions or VQA answers",
       choices=VISION_TASKS),
    _p("train_vision", bool, False, "VLMs: adapters on the vision tower too (frozen by "
       "default)"),
)

PRETRAINING = (
    _p("lr", float, 6e-4, "peak learning rate (AdamW)", **_POSITIVE),
    _p("lr_warmup_steps", int, -1, "linear warm-up steps; -1: a tenth of warmup + steps",
       low=-1),
    _p("min_lr_ratio", float, 0.1, "the cosine decay ends at this share of lr", low=0, high=1),
    _p("weight_decay", float, 0.1, "AdamW weight decay", low=0),
    _p("beta2", float, 0.95, "AdamW beta2", low=0, low_open=True, high=1, high_open=True),
    _p("grad_clip", float, 1.0, "global gradient-norm clip; 0 turns it off", low=0),
    _p("precision", str, "auto", "bf16 autocast, fp32, or auto (bf16 on CUDA, fp32 on CPU)",
       choices=("auto", "bf16", "fp32")),
    _p("peak_tflops", float, None, "dense bf16 peak for mfu; unset: measured on the device",
       **_POSITIVE),
    _p("measure_peak", bool, True, "measure the matmul peak when peak_tflops is not given"),
    _p("eval_tokens", int, 4096, "held-out tokens scored for eval_ppl; 0 skips it",
       **_EVAL_TOKENS),
    _p("save", bool, False, "write RUN_DIR/checkpoint.pt after the run"),
    _p("sharding", str, "auto", "several devices: ddp, fsdp2 (fully_shard), or auto (fsdp2 "
       "where one GPU cannot hold the weights)", choices=("auto", "ddp", "fsdp2")),
    _p("threads", int, None, "torch intra-op threads; unset: one fewer than the usable CPUs",
       low=1),
    _p("experts", int, 8, "moe: experts per layer", low=1),
    _p("top_k", int, 2, "moe: experts each token is routed to (at most experts)", low=1),
    _p("moe_match", str, "flops", "moe: flops (equal active FLOPs) or expert (experts as wide "
       "as the dense FFN)", choices=("flops", "expert")),
    _p("aux_loss_coef", float, 0.01, "moe: load-balancing loss weight", low=0),
    _p("loss_chunk_tokens", int, 0, "tokens per cross-entropy chunk; 0: about 1 GiB of "
       "logits", low=0),
    _p("loss_kernel", str, "auto", "loss: liger (liger-kernel fused linear CE, CUDA), torch "
       "(chunked), auto (liger where it runs)", choices=("auto", "liger", "torch")),
    _p("compile", str, "auto", "torch.compile each block: true, false, or auto (decoder "
       "variants on CUDA)", choices=("auto", "true", "false")),
    _p("checkpointing", str, "auto", "activation checkpointing: true, false, or auto (Mamba "
       "without its fused kernels)", choices=("auto", "true", "false")),
    _p("recurrence", str, "auto", "Mamba's scan and RWKV's WKV: torch, triton (CUDA), or auto "
       "(triton where it runs)", choices=("auto", "torch", "triton")),
    _p("nsa_block", int, 64, "nsa: tokens per block, compressed and selected (a power of two, "
       "divides seq_len)", low=16, high=256),
    _p("nsa_blocks", int, 8, "nsa: blocks each query attends in full (a power of two, 4 to "
       "nsa_block / 2)", low=4),
    _p("nsa_window", int, 256, "nsa: sliding-window tokens; 0 drops the window branch", low=0),
)

SCHEMA: dict[str, dict[str, Param]] = {
    family: {p.name: p for p in table}
    for family, table in (("inference", INFERENCE), ("finetuning", FINETUNING),
                          ("pretraining", PRETRAINING))}
"""Family -> parameter name -> Param, in the order the family config declares them."""


def of(family: str) -> dict[str, Param]:
    """The `--set` parameters of `family` (none for an unknown family)."""
    return SCHEMA.get(family, {})


# -- rules across parameters ----------------------------------------------------------------

Rule = Callable[[Mapping[str, Any]], str | None]


def _compile_mode_rule(v: Mapping[str, Any]) -> str | None:
    if v["engine"] == "compile" and v["compile_mode"] == "none":
        return ("compile_mode=none runs the fused step uncompiled: none only with "
                "engine=fused, not compile")
    return None


def _adalora_rule(v: Mapping[str, Any]) -> str | None:
    if v["adalora_init_r"] is not None and v["adalora_init_r"] < v["rank"]:
        return f"adalora_init_r must be >= rank ({v['rank']}), got {v['adalora_init_r']}"
    return None


def _top_k_rule(v: Mapping[str, Any]) -> str | None:
    if v["top_k"] > v["experts"]:
        return f"need 1 <= top_k <= experts, got top_k={v['top_k']}, experts={v['experts']}"
    return None


RULES: dict[str, tuple[Rule, ...]] = {
    "inference": (_compile_mode_rule,), "finetuning": (_adalora_rule,),
    "pretraining": (_top_k_rule,)}
"""Checks that need more than one parameter of a family."""


def check_values(family: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of `family` (missing ones take their default) checked against its
    choices, range and the family's rules; returns them in canonical form."""
    table = of(family)
    out = {name: p.check(values.get(name, p.default)) for name, p in table.items()}
    for rule in RULES.get(family, ()):
        problem = rule(out)
        if problem:
            raise BadInput(problem)
    return out


def resolve(family: str, raw: Mapping[str, ParamValue]) -> dict[str, Any]:
    """The typed, checked parameters of a RunSpec's `params` (defaults filled in); BadInput
    for an unknown key (listing the valid ones), a value of the wrong type, a value out of
    its choices or range, or a combination a rule refuses."""
    table = of(family)
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise BadInput(f"unknown --set parameter(s) for {family}: {', '.join(unknown)} "
                       f"(valid: {', '.join(sorted(table)) or 'none'})")
    values: dict[str, Any] = {}
    try:
        for name, value in raw.items():
            values[name] = coerce_param(name, value, table[name].kind)
    except ProtocolError as e:
        raise BadInput(str(e)) from None
    return check_values(family, values)


# -- rules across the technique, the model card and the lengths -----------------------------

FLOAT_TECHNIQUES = ("fp32", "bf16", "fp16")
"""Inference techniques that are a dtype (the rest quantize weights over `--set dtype`)."""
BYTE_VOCAB = 260
"""Ids the byte tokenizer (runners.models.tokenizer) produces."""


def _card(card: Any, key: str) -> Any:
    return card.get(key) if isinstance(card, Mapping) else getattr(card, key, None)


def is_vision(card: Any) -> bool:
    """Whether a card (a catalog mapping or a ModelCard) is a vision-language model."""
    return _card(card, "vision") is not None


def pair_problem(family: str, technique: str, card: Any, *, seq_len: int, new_tokens: int,
                 values: Mapping[str, Any] | None = None) -> str | None:
    """Why this technique cannot run on this model card with these lengths and parameters,
    or None. `card` is a catalog entry (a mapping) or a runners.models.cards.ModelCard; `values`
    are the family's parameters (defaults for those missing).

    The one owner of these rules: the Launch matrix marks such pairs, the launcher refuses
    them before a runner starts, and the runner's `validate` refuses them again.
    """
    v = {name: p.default for name, p in of(family).items()} | dict(values or {})
    name, max_pos = _card(card, "id"), _card(card, "max_position")
    vision = is_vision(card)
    if family == "inference" and vision != (v["task"] in VISION_TASKS):
        if vision:
            return f"{name} is a vision-language model: --set task=vqa or task=captioning"
        return (f"task {v['task']} needs a vision-language model (tiny-vlm, smolvlm-256m, "
                f"qwen2-vl-2b, ...); {name} is text only")
    if family == "pretraining" and vision:
        return f"pretraining is text only; {name} is a vision-language model"
    if family == "inference":
        need, what = seq_len + new_tokens, f"seq_len + new_tokens = {seq_len + new_tokens}"
        if technique in FLOAT_TECHNIQUES and v["dtype"] not in ("auto", technique):
            return (f"--set dtype applies to quantized techniques; {technique} runs in "
                    f"{technique}")
        backend = v.get("backend", "auto")
        if backend != "auto" and technique in FLOAT_TECHNIQUES:
            return (f"--set backend applies to quantized techniques; {technique} runs in "
                    f"{technique}")
        served = QUANT_BACKENDS.get(technique, ())
        if backend != "auto" and served and backend not in served:
            return (f"{technique} has no {backend} backend (choose from auto, "
                    f"{', '.join(served)})")
        vocab = _card(card, "vocab_size")
        if vision:  # the prompt is the image tokens and the question, not seq_len tokens
            need, what = new_tokens, f"new_tokens {new_tokens}"
        elif _card(card, "tokenizer") == "byte" and vocab is not None and vocab < BYTE_VOCAB:
            return f"{name} has {vocab} tokens, fewer than the byte tokenizer's {BYTE_VOCAB}"
    elif family == "finetuning":
        if seq_len < 2:
            return "seq_len must be at least 2 to have a next token to predict"
        extra = v["virtual_tokens"] if technique == "prompt-tuning" else 0
        need = seq_len + extra
        what = f"seq_len {seq_len}" + (f" + {extra} virtual tokens" if extra else "")
        layers = _card(card, "num_layers")
        if technique == "freeze" and layers is not None and v["freeze_k"] > layers:
            return f"freeze_k {v['freeze_k']} exceeds {name}'s {layers} blocks"
    else:
        if _card(card, "weights") != "random":
            return (f"pretraining trains from random weights; {name} is a real-weights model "
                    "(choose a shape: tiny, qwen2.5-0.5b, ...)")
        need, what = seq_len, f"seq_len {seq_len}"
        if technique == "nsa":
            heads, width = _card(card, "num_heads"), _card(card, "hidden_size")
            problem = nsa_problem(v["nsa_block"], v["nsa_blocks"], v["nsa_window"],
                                  width // heads if heads and width else 0)
            if problem:
                return problem
            if seq_len % v["nsa_block"]:
                return (f"nsa needs seq_len a multiple of nsa_block {v['nsa_block']}, got "
                        f"seq_len {seq_len}")
    if max_pos and need > max_pos:
        return f"{what} exceeds {name}'s {max_pos} positions"
    return None


def nsa_problem(block_size: int, block_count: int, window: int, head_dim: int) -> str | None:
    """Why NSA cannot run with these sizes (fla's kernel's limits, held on every device so a
    model is the same everywhere), or None."""
    if block_size < 16 or block_size & (block_size - 1):
        return f"nsa_block must be a power of two of at least 16, got {block_size}"
    if block_count < 4 or block_count & (block_count - 1) or 2 * block_count > block_size:
        return (f"nsa_blocks must be a power of two within [4, nsa_block / 2 = "
                f"{block_size // 2}], got {block_count}")
    if window < 0:
        return f"nsa_window must be at least 0, got {window}"
    if head_dim > 256:
        return f"NSA's kernel takes heads at most 256 wide, got {head_dim}"
    return None
