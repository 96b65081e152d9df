"""The inference family: time prefill and forced-length greedy decode of a model in one
precision or weight quantization, then score it on held-out text.

Shape of a run (nanoGPT's bench.py pattern): load the model; score the uncompressed
reference on the held-out text when MCR needs it; cast and quantize; build the requests,
so data prep is never timed; prepare the decode engine (static cache, CUDA graph capture,
compilation) outside every window; run `warmup` requests in a window of their own; reset
the peak-memory counters; run `steps` requests inside the `measure` window (energy is read
only at its edges, after a device sync); replay the same requests' prefills alone in a
`prefill` window, so energy splits into prefill and decode; then compute the perplexity of
the held-out slice. Each request is `batch_size` prompts of exactly `seq_len` tokens
decoding exactly `new_tokens` tokens (EOS ignored), so runs of different techniques do the
same work.

MCR (DESIGN.md section 6) = (reference bytes / stored bytes) x (reference ppl / ppl), with
the reference the same weights in `mcr_reference` (by default bf16 on CUDA, fp32 on CPU),
scored in this run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from profiling import metrics as pm
from profiling.window import WindowMeter
from runners.data import corpus as corpus_mod
from runners.errors import OutOfMemory, Unsupported, is_oom, one_line
from runners.families import inference_steps as steps
from runners.families import scored
from runners.families.base import Family, FamilyConfig, register
from runners.families.inference_metrics import Measured, inference_metrics, quality_metrics
from runners.models import build as model_mod
from runners.protocol import RANDOM_WEIGHTS_NOTE, Event, RunResult
from runners.system import device as dev
from runners.techniques import quant_backends, scoring
from runners.techniques import quantize as quant
from runners.techniques.quality import Reference, calibration_batches, perplexity

__all__ = ["TECHNIQUES", "InferenceConfig", "InferenceFamily", "Technique", "perplexity"]

SOURCE = "runner"
PPL_CHUNK_TOKENS = 1024
"""Longest sequence one perplexity forward sees (longer held-out text is chunked)."""
CALIBRATION_CHUNK_TOKENS = 256
"""Tokens per calibration forward (w8a8)."""
DISTINCT_REQUESTS = 64
"""Distinct prompt batches built per run; longer runs cycle through them."""
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True, slots=True)
class Technique:
    """An inference technique: a float dtype, or a weight quantization over one."""

    id: str
    dtype: str | None
    """torch dtype name of a float technique; None: the run's `--set dtype` (quantized)."""
    quantization: quant.Quantization | None = None

    def compute_dtype(self, requested: str, device: str) -> torch.dtype:
        """The dtype activations and unquantized tensors run in (quantized techniques:
        `requested`, where `auto` is the device's natural float, see `float_default`)."""
        if self.dtype is not None:
            return getattr(torch, self.dtype)
        return getattr(torch, DTYPES[float_default(device) if requested == "auto" else requested])


def float_default(device: str) -> str:
    """bf16 on CUDA (what the kernels and the paper use), fp32 on CPU (where most CPUs
    lack fast bf16 matmuls: SmolLM2-135M decoded about 2x slower in bf16 than in fp32 on
    a 2-core x86 VM)."""
    return "bf16" if device.startswith("cuda") else "fp32"


TECHNIQUES: dict[str, Technique] = {
    **{t: Technique(t, DTYPES[t]) for t in ("fp32", "bf16", "fp16")},
    **{q.id: Technique(q.id, None, q) for q in quant.QUANTIZATIONS.values()},
}
"""Inference techniques by id (each catalog id of the family)."""


@dataclass(frozen=True)
class InferenceConfig(FamilyConfig):
    """An inference run: the RunSpec's fields plus the `--set` parameters below."""

    family: ClassVar[str] = "inference"

    task: str = "decode"
    """`decode` (text prompts, the rest of this module) or a vision-language task, `vqa` or
    `captioning` (image + prompt in, text out: runners.families.vision)."""
    engine: str = "auto"
    """`fused` (the lean decoder of runners.engines.fused: fused QKV and gate/up projections, own
    static cache, compiled step replayed as a CUDA graph; the CUDA default), `graph` (the
    transformers forward over a static cache, one decode step replayed as a CUDA graph),
    `loop` (own loop over a dynamic cache; the CPU default), `static` (own loop over a
    static cache), `compile` (`graph` over a torch.compile'd step) or `eager`
    (`model.generate()`, the library baseline). `auto` tries the device's defaults in order
    (CUDA: fused, graph, loop) and records why any was passed over."""
    compile_mode: str = "default"
    """torch.compile mode of `engine=compile` and `fused`: default or
    max-autotune-no-cudagraphs; `none` (fused only) runs the lean step uncompiled."""
    dtype: str = "auto"
    """Compute dtype of quantized techniques: bf16, fp16 or fp32; `auto`: bf16 on CUDA,
    fp32 on CPU."""
    backend: str = "auto"
    """Library that quantizes and runs the weights: quanto, torchao, gemlite or bnb; `auto`:
    the first of runners.techniques.quant_backends.PREFERENCE that can run here."""
    exclude: str = ",".join(quant.DEFAULT_EXCLUDE)
    """Comma-separated module-name patterns left unquantized; `none` quantizes every linear."""
    mcr_reference: str = "auto"
    """Dtype of the uncompressed reference MCR compares against: bf16, fp32 or none;
    `auto`: bf16 on CUDA, fp32 on CPU."""
    calibration_tokens: int = 1024
    """Prompt-pool tokens run through the model to calibrate activation scales (w8a8)."""
    peak_tflops: float | None = field(default=None, metadata={"kind": float})
    """Dense peak of the device in TFLOP/s for `mfu` (bf16 peak on GPUs); None: no mfu."""
    mem_bw_gbps: float | None = field(default=None, metadata={"kind": float})
    """Device memory bandwidth in GB/s for `roofline_fraction`; None: not computed."""
    threads: int | None = field(default=None, metadata={"kind": int})
    """torch intra-op threads; None: one fewer than the CPUs this process may use."""
    eval_tokens: int = 512
    """Held-out tokens scored for `eval_ppl`; 0 skips the evaluation (and MCR)."""
    quality: str = "off"
    """lm-eval tasks scored on the measured model after the measured window, in a `quality`
    window of its own: `off`, `suite` (the shipped offline suite, runners.techniques.tasks)
    or comma-separated task names (their datasets must be in the Hugging Face cache)."""
    quality_items: int = 50
    """Items per quality task: the suite generates this many; other tasks score their first N."""
    score_of: str | None = field(default=None, metadata={"kind": str})
    """Set by `efficientllm eval`: build stored run `score_of`'s model and score it only."""
    phase_windows: bool = True
    """Also replay the measured prefills in a `prefill` window (energy by phase)."""
    trust_remote_code: bool = False
    """Let a local model dir run its own code (off unless asked for)."""
    quantize_vision: bool = False
    """vqa/captioning: quantize the vision tower and projector too (by default only the
    language model is; they stay in the run's float dtype)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # choices, ranges and rules: runners.params
        if self.mcr_reference == "auto":
            object.__setattr__(self, "mcr_reference", float_default(self.device))


@register
class InferenceFamily(Family[InferenceConfig]):
    """Latency, throughput, energy, size and perplexity of one model x technique."""

    name = "inference"
    config_type = InferenceConfig
    techniques = frozenset(TECHNIQUES)

    _built: model_mod.BuiltModel | None = None
    _quant_report: dict[str, Any] | None = None
    _reference_note: str | None = None
    _tokenizer: Any = None
    _tasks: tuple[str, ...] = ()

    @property
    def technique(self) -> Technique:
        return TECHNIQUES[self.config.technique]

    def validate(self) -> None:
        super().validate()  # positions, dtype and tokenizer: runners.params.pair_problem
        c, tech = self.config, self.technique
        if c.task != "decode":
            from runners.families import vision

            vision.check(self)
        if tech.quantization is not None:
            quant.check_available(tech.quantization, c.device, c.backend,
                                  tech.compute_dtype(c.dtype, c.device))
        if c.engine == "graph" and not c.device.startswith("cuda"):
            raise Unsupported(f"engine {c.engine!r} captures CUDA graphs and needs a CUDA device "
                              f"(got {c.device}); use engine=loop or static")

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        c, ctx, tech = self.config, self.ctx, self.technique
        if c.task != "decode":
            from runners.families import vision

            return vision.run(self)
        ctx.phase("load", model=c.model, technique=c.technique)
        threads = dev.set_threads(c.threads)
        compute = tech.compute_dtype(c.dtype, c.device)
        ref_dtype = self._reference_dtype()
        base = compute if ref_dtype in (None, compute) else torch.float32
        try:
            built = model_mod.load(self.card, base, c.device, c.seed, home=ctx.home,
                                   trust_remote_code=c.trust_remote_code, on_phase=ctx.phase)
        except OutOfMemory as e:
            if base == compute:
                raise
            # The float32 original that both the reference and the run's dtype derive from
            # does not fit: run without the reference rather than not at all.
            self._reference_note = f"no MCR reference: {e}"
            ctx.emit(Event.log(self._reference_note))
            ref_dtype = None
            built = model_mod.load(self.card, compute, c.device, c.seed, home=ctx.home,
                                   trust_remote_code=c.trust_remote_code, on_phase=ctx.phase)
        self._built = built
        tokenizer = model_mod.tokenizer_for(self.card, ctx.home, c.trust_remote_code)
        text = corpus_mod.load(c.dataset, c.eval_tokens, tokenizer)

        # Quality only where there is some: on random weights perplexity is noise around
        # the vocabulary size at every precision (RANDOM_WEIGHTS_NOTE), so it is not scored.
        ppl_scored = built.weights != "random" and c.eval_tokens > 0
        self._tokenizer = tokenizer
        tasks = scoring.task_names(c.quality)
        self._tasks = tasks if built.weights != "random" else ()
        reference = None
        if ref_dtype is not None and ref_dtype != compute:
            reference = self._reference(built, ref_dtype, text.heldout, ppl_scored)
        built = self._built = model_mod.cast(built, compute)
        if ref_dtype == compute and tech.quantization is not None:
            reference = self._reference(built, ref_dtype, text.heldout, ppl_scored)
        kernels: dict[str, Any] = {}
        if tech.quantization is not None:
            built, kernels = self._quantize(built, tech.quantization, text.pool)
            self._built, self._quant_report = built, kernels
        self._probe(built)
        if c.score_of:
            return self._score_only(built, text.heldout, reference, ppl_scored, kernels)

        # Requests are built before any window opens, so data prep is never timed. Past
        # DISTINCT_REQUESTS they repeat: the content of a prompt does not change its cost.
        sampler = corpus_mod.PromptSampler(text.pool, c.seq_len, c.seed)
        distinct = [torch.tensor(sampler.batch(c.batch_size), dtype=torch.long, device=c.device)
                    for _ in range(min(c.warmup + c.steps, DISTINCT_REQUESTS))]
        requests = [distinct[i % len(distinct)] for i in range(c.warmup + c.steps)]
        sync = dev.sync_fn(c.device)
        pad = self.card.pad_token_id
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        engine, fallback = steps.prepared_engine(self, built, sync, pad, requests[0])
        meter = dev.window_meter(c.device, sync, ctx.sample_device)

        warm, _ = steps.run_requests(self, "warmup", requests[:c.warmup], engine, meter)
        steps.keep_tuning(self)
        dev.reset_peak_memory(c.device)
        timings, window = steps.run_requests(self, "measure", requests[c.warmup:], engine,
                                             meter)
        assert window is not None  # steps >= 1 (RunSpec checks it)
        peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)
        prefill_window = None
        if c.phase_windows:
            prefill_window = steps.prefill_window(self, requests[c.warmup:], engine, meter)

        ppl = None
        if ppl_scored:
            ctx.phase("eval", tokens=len(text.heldout))
            ppl = perplexity(built.model, text.heldout, c.device,
                             min(PPL_CHUNK_TOKENS, self.card.max_position))
        task_scores = (self._score_tasks(built.model, "quality", meter) if self._tasks
                       else scoring.unscored(tasks, RANDOM_WEIGHTS_NOTE))
        if ref_dtype == compute and tech.quantization is None:
            reference = Reference(model_mod.dtype_name(compute), built.size.weight_bytes, ppl,
                                  scoring.mean(task_scores) if self._tasks else None)
        reference_note = None
        if reference is None:
            reference_note = self._reference_note or (
                "no reference: mcr_reference=none" if c.mcr_reference == "none"
                else "no reference: eval_tokens=0")
        quality_note = (RANDOM_WEIGHTS_NOTE if built.weights == "random" else
                        "not scored: eval_tokens=0" if c.eval_tokens == 0 else None)

        measured = Measured(
            timings=tuple(timings), window=window, prefill_window=prefill_window,
            batch_size=c.batch_size, prompt_tokens=c.seq_len, new_tokens=c.new_tokens,
            total_params=built.size.total_params, weight_bytes=built.size.weight_bytes,
            peak_allocated_gib=peak_alloc, peak_reserved_gib=peak_reserved,
            peak_rss_gib=dev.peak_rss_gib(), ppl=ppl, reference=reference,
            peak_tflops=c.peak_tflops, mem_bw_gbps=c.mem_bw_gbps,
            n_layers=self.card.num_layers, d_attn=self.card.num_heads * self.card.head_dim,
            quality_note=quality_note, reference_note=reference_note,
            task_scores=task_scores)
        info = {
            "weights": built.weights, "weights_source": built.source, "dtype": built.dtype,
            "init_dtype": built.init_dtype, "total_params": built.size.total_params,
            "weight_bytes": built.size.weight_bytes, "device": c.device,
            "batch_size": c.batch_size, "prompt_tokens": c.seq_len, "new_tokens": c.new_tokens,
            "engine": engine.name, "engine_detail": engine.describe(),
            "engine_fallback": fallback, "attn_impl": built.attn_impl, "arch": self.card.arch,
            "tokenizer": getattr(tokenizer, "name", "byte"), "threads": threads,
            "text": text.source, "eval_tokens": len(text.heldout) if c.eval_tokens else 0,
            "measure_s": window.elapsed_s, "warmup_requests": len(warm),
            "measured_requests": len(timings), "peak_tflops": c.peak_tflops,
            "mem_bw_gbps": c.mem_bw_gbps,
            "mfu_flops_per_sequence": pm.inference_flops_per_sequence(
                built.size.total_params, c.seq_len, c.new_tokens, n_layers=self.card.num_layers,
                d_attn=self.card.num_heads * self.card.head_dim),
            "quality_scored": ppl_scored,
            "quality_tasks": scoring.info(task_scores),
            "mcr_quality": ("tasks" if scoring.mean(task_scores) is not None
                            else "perplexity" if ppl is not None else None),
            "energy_note": window.energy_note,
            "quantization": self._quant_info(kernels),
            "mcr_reference": None if reference is None else reference.dtype,
            "mcr_reference_note": self._reference_note,
            "reference_weight_bytes": None if reference is None else reference.weight_bytes,
        }
        return RunResult(run_id=c.run_id, status="ok", metrics=tuple(inference_metrics(measured)),
                         info=info)

    def _score_only(self, built: model_mod.BuiltModel, heldout: Sequence[int],
                    reference: Reference | None, ppl_scored: bool,
                    kernels: dict[str, Any]) -> RunResult:
        """`efficientllm eval`: the stored run's model, built the same way, scored on the
        quality tasks (and perplexity) without measuring its cost again."""
        c, ctx = self.config, self.ctx
        if built.weights == "random":
            raise Unsupported(f"{c.model} has random weights: no quality to score")
        meter = dev.window_meter(c.device, dev.sync_fn(c.device), ctx.sample_device)
        ppl = None
        if ppl_scored:
            ctx.phase("eval", tokens=len(heldout))
            ppl = perplexity(built.model, heldout, c.device,
                             min(PPL_CHUNK_TOKENS, self.card.max_position))
        task_scores = self._score_tasks(built.model, "quality", meter)
        if reference is None and self._reference_dtype() == built.model.dtype:
            reference = Reference(model_mod.dtype_name(built.model.dtype),
                                  built.size.weight_bytes, ppl, scoring.mean(task_scores))
        metrics = quality_metrics(
            built.size.weight_bytes, ppl, reference, task_scores,
            quality_note=None if ppl_scored else "not scored: eval_tokens=0",
            reference_note=None if reference else self._reference_note or "no reference")
        info = {"score_of": c.score_of, "weights_source": built.source, "dtype": built.dtype,
                "device": c.device, "quality_tasks": scoring.info(task_scores),
                "mcr_quality": ("tasks" if scoring.mean(task_scores) is not None
                                else "perplexity" if ppl is not None else None),
                "mcr_reference": None if reference is None else reference.dtype,
                "quantization": self._quant_info(kernels)}
        return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)

    # -- pieces of run -------------------------------------------------------------------------

    def _reference_dtype(self) -> torch.dtype | None:
        c = self.config
        if c.mcr_reference == "none" or (c.eval_tokens == 0
                                          and not scoring.task_names(c.quality)):
            return None
        return getattr(torch, DTYPES[c.mcr_reference])

    def _reference(self, built: model_mod.BuiltModel, dtype: torch.dtype,
                   heldout: Sequence[int], scored: bool) -> Reference | None:
        """Bytes (and, when `scored`, perplexity) of the model's weights in `dtype`, cast
        for the block only; None, with a note, when the second copy does not fit."""
        c = self.config
        self.ctx.phase("reference", dtype=model_mod.dtype_name(dtype),
                       tokens=len(heldout) if scored else 0)
        chunk = min(PPL_CHUNK_TOKENS, self.card.max_position)
        ppl = task_quality = None
        try:
            with model_mod.cast_temporarily(built.model, dtype) as size:
                if scored:
                    ppl = perplexity(built.model, heldout, c.device, chunk)
                if self._tasks:
                    task_quality = scoring.mean(
                        self._score_tasks(built.model, "reference_quality"))
        except Exception as e:  # noqa: BLE001 - only memory is forgiven here
            if not is_oom(e):
                raise
            self._reference_note = f"no MCR reference: out of memory scoring it ({one_line(e)})"
            self.ctx.emit(Event.log(self._reference_note))
            if c.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return None
        return Reference(model_mod.dtype_name(dtype), size.weight_bytes, ppl, task_quality)

    def _score_tasks(self, model: Any, phase: str,
                     meter: WindowMeter | None = None) -> tuple[scoring.TaskScore, ...]:
        """The run's quality tasks on `model` (lm-eval), in window `phase` when `meter` is
        given, so their time and energy are never part of the measured window."""
        return scored.score_in_window(self.ctx, model, self._tokenizer, self._tasks, phase,
                                      items=self.config.quality_items, meter=meter)

    def _quantize(self, built: model_mod.BuiltModel, q: quant.Quantization,
                  pool: Sequence[int]) -> tuple[model_mod.BuiltModel, dict[str, Any]]:
        c, ctx = self.config, self.ctx
        exclude = quant.exclude_patterns(c.exclude)
        q = quant.resolve(q, c.backend, c.device, self.technique.compute_dtype(c.dtype, c.device))
        ctx.phase("quantize", technique=q.id, backend=q.backend, weights=q.weights,
                  activations=q.activations, exclude=list(exclude))
        calibrate: Callable[[], None] | None = None
        if q.calibrated:
            batches = calibration_batches(pool, c.calibration_tokens, CALIBRATION_CHUNK_TOKENS,
                                          c.device)

            def calibrate() -> None:
                ctx.phase("calibrate", tokens=sum(b.shape[1] for b in batches),
                          batches=len(batches))
                with torch.no_grad():
                    for batch in batches:
                        built.model(input_ids=batch, use_cache=False)

        quant_backends.load_tuning(q.backend, ctx.home, c.device)
        quant.quantize(built.model, q, exclude, calibrate)
        # packed layers (gemlite, bitsandbytes) hold fewer elements than parameters
        built = replace(built, size=replace(model_mod.measure(built.model),
                                            total_params=built.size.total_params))
        extension = quant.extension_needed(built.model, c.device)
        if extension is not None:
            ctx.phase("build_kernels", extension=extension)
            quant.build_extension(extension)
        report = quant.kernel_report(built.model, c.device)
        report.update(backend=q.backend, backend_asked=c.backend, weights=q.weights,
                      activations=q.activations, dynamic_activations=q.dynamic_activations,
                      group_size=q.group_size, exclude=list(exclude), extension=extension)
        return built, report

    def _quant_info(self, kernels: Mapping[str, Any]) -> dict[str, Any] | None:
        q = self.technique.quantization
        if q is None:
            return None
        return {"compute_dtype": self._built.dtype if self._built else None, **kernels}

    def _probe(self, built: model_mod.BuiltModel) -> None:
        """One tiny forward, so a dtype the device's kernels lack fails as `unsupported`."""
        c = self.config
        x = torch.zeros((1, 2), dtype=torch.long, device=c.device)
        try:
            with torch.no_grad():
                built.model(input_ids=x, use_cache=False)
        except (RuntimeError, NotImplementedError) as e:
            text = str(e)
            if "not implemented for" in text or isinstance(e, NotImplementedError):
                raise Unsupported(f"{c.technique} ({built.dtype}) does not run on {c.device} "
                                  f"with torch {torch.__version__}: "
                                  f"{text.splitlines()[0] if text else type(e).__name__}"
                                  ) from None
            raise

    def failure_info(self) -> Mapping[str, Any]:
        info = dict(super().failure_info())
        info["engine"] = self.config.engine
        info["technique"] = self.config.technique
        if self._built is not None:
            info.update(dtype=self._built.dtype, total_params=self._built.size.total_params,
                        weight_bytes=self._built.size.weight_bytes, weights=self._built.weights)
        return info
