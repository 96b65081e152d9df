"""The vision-language tasks of the inference family (`--set task=vqa|captioning`): image +
prompt in, text out, measured the way the text path measures decode.

Shape of a run (the text path's, runners.families.inference): load the VLM (random-weight
shape or local weights); score the uncompressed reference when MCR needs it; cast, and
quantize the language model (the vision tower and projector stay in the run's float dtype
unless `--set quantize_vision=true`); build every request's inputs (images resized and
normalised, prompts tokenised and left-padded to one length) before any window opens;
`warmup` requests in a window of their own; `steps` requests in the `measure` window, each
a batch of `batch_size` image + prompt pairs decoding exactly `new_tokens` tokens (EOS
ignored); the same requests' prefills (vision encoder included) alone in a `prefill` window;
then, on real weights, every item of the dataset decoded greedily to its end in a `quality`
window: VQA exact match or corpus BLEU (sacrebleu) of the captions.

The metrics are the text path's (runners.families.inference_metrics, `prompt_tokens` being
the padded prompt with its image tokens) plus runners.families.vision_metrics'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from profiling.window import WindowMeter
from runners.data import images as image_data
from runners.engines.vision import VisionLoopEngine, VisionTiming
from runners.errors import Unsupported
from runners.families import inference_steps as steps
from runners.families import vision_metrics as vm
from runners.families.inference_metrics import Measured, inference_metrics
from runners.models import build as model_mod
from runners.models import vlm
from runners.protocol import RANDOM_WEIGHTS_NOTE, Event, RunResult
from runners.system import device as dev
from runners.techniques import quant_backends
from runners.techniques import quantize as quant
from runners.techniques.quality import Reference

InferenceFamily = Any
"""runners.families.inference.InferenceFamily (not imported: it imports this module)."""

TASKS = ("vqa", "captioning")
DISTINCT_REQUESTS = 64
QUALITY_TOKENS = {"vqa": 8, "captioning": 24}
"""Most tokens the quality pass decodes per item (it stops at EOS)."""
ENGINES = ("auto", "loop")


def check(fam: InferenceFamily) -> None:
    """What a vision-language run refuses before the device lock."""
    c = fam.config
    vlm._vision(fam.card)  # noqa: SLF001 - BadInput for a text model
    if c.engine not in ENGINES:
        raise Unsupported(f"engine {c.engine!r} is a text decode engine; vision-language "
                          "tasks run engine=loop (or auto)")
    if c.quality != "off":
        raise Unsupported("--set quality runs lm-eval text tasks; vision-language tasks "
                          "score vqa_accuracy / caption_bleu on their own dataset")
    if c.score_of:
        raise Unsupported("efficientllm eval re-scores text runs; a vision-language run "
                          "scores its task in its own quality window")


def run(fam: InferenceFamily) -> RunResult:
    """One vision-language inference run (the module docstring's shape)."""
    c, ctx, card, tech = fam.config, fam.ctx, fam.card, fam.technique
    ctx.phase("load", model=c.model, technique=c.technique, task=c.task)
    threads = dev.set_threads(c.threads)
    data = image_data.load(c.dataset, ctx.home)
    items = image_data.for_task(data, c.task)
    pictures = image_data.open_images(items, data.source)
    compute = tech.compute_dtype(c.dtype, c.device)
    scorable = card.weights == "real" and any(vm.reference_of(i, c.task) for i in items)
    ref_dtype = fam._reference_dtype()  # noqa: SLF001
    base = compute if ref_dtype in (None, compute) or not scorable else torch.float32
    built = vlm.load(card, base, c.device, c.seed, trust_remote_code=c.trust_remote_code)
    fam._built = built  # noqa: SLF001 - failure_info reads it
    prompter = vlm.prompter_for(card)
    sync = dev.sync_fn(c.device)
    engine = VisionLoopEngine(built.model, card.arch, c.new_tokens, sync)
    meter = dev.window_meter(c.device, sync, ctx.sample_device)
    pad_to = (None if prompter.processor is not None else
              max(len(prompter.ids(image_data.prompt(i, c.task))) for i in items))

    def batch_inputs(idx: Sequence[int]) -> dict[str, torch.Tensor]:
        return prompter.inputs([pictures[i] for i in idx],
                               [image_data.prompt(items[i], c.task) for i in idx],
                               c.device, pad_to)

    reference = None
    if ref_dtype is not None and card.weights == "random":  # bytes only: no quality signal
        reference = Reference(model_mod.dtype_name(ref_dtype),
                              vlm.size_on_meta(card, ref_dtype).weight_bytes, None, None)
    elif scorable and ref_dtype is not None and (ref_dtype != compute
                                                 or tech.quantization is not None):
        ctx.phase("reference", dtype=model_mod.dtype_name(ref_dtype))
        with model_mod.cast_temporarily(built.model, ref_dtype) as size:
            ref_quality = _score(fam, engine, items, batch_inputs, prompter, None)
        reference = Reference(model_mod.dtype_name(ref_dtype), size.weight_bytes, None,
                              ref_quality.quality)
    built = fam._built = model_mod.cast(built, compute)  # noqa: SLF001
    kernels: dict[str, Any] = {}
    if tech.quantization is not None:
        pool = [t for i in items for t in _text_ids(prompter, image_data.prompt(i, c.task))]
        built, kernels = _quantize(fam, built, pool)
        fam._built, fam._quant_report = built, kernels  # noqa: SLF001

    count = c.warmup + c.steps
    n = len(items)
    distinct = [batch_inputs([(r * c.batch_size + k) % n for k in range(c.batch_size)])
                for r in range(min(count, DISTINCT_REQUESTS))]
    requests = [distinct[i % len(distinct)] for i in range(count)]
    prompt_tokens = int(requests[0]["input_ids"].shape[1])
    ctx.phase("prepare", engine=engine.name)
    def vision(t: VisionTiming) -> dict[str, Any]:
        return {"vision_s": t.vision_s}

    warm, _ = steps.run_requests(fam, "warmup", requests[:c.warmup], engine, meter,
                                 prompt_tokens, vision)
    steps.keep_tuning(fam)
    dev.reset_peak_memory(c.device)
    timings, window = steps.run_requests(fam, "measure", requests[c.warmup:], engine,
                                         meter, prompt_tokens, vision)
    assert window is not None  # steps >= 1 (RunSpec checks it)
    peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)
    prefill_window = (steps.prefill_window(fam, requests[c.warmup:], engine, meter,
                                           prompt_tokens)
                      if c.phase_windows else None)
    scores = (_score(fam, engine, items, batch_inputs, prompter, meter) if scorable
              else vm.Scores.unscored(c.task))
    if reference is None and ref_dtype is not None and scorable:
        reference = Reference(model_mod.dtype_name(compute), built.size.weight_bytes, None,
                              scores.quality)
    engine.close()

    quality_note = (RANDOM_WEIGHTS_NOTE if built.weights == "random" else
                    None if scorable else f"not scored: the dataset has no {c.task} references")
    lm = vlm.part(built.model, card.arch, "language")
    lm_config = getattr(lm, "config", card)
    n_layers = int(getattr(lm_config, "num_hidden_layers", card.num_layers))
    d_attn = card.num_heads * card.head_dim
    measured = Measured(
        # VisionTiming has RequestTiming's latency_s and ttft_s, all the metrics read
        timings=tuple(timings),  # type: ignore[arg-type]
        window=window, prefill_window=prefill_window,
        batch_size=c.batch_size, prompt_tokens=prompt_tokens, new_tokens=c.new_tokens,
        total_params=built.size.total_params, weight_bytes=built.size.weight_bytes,
        peak_allocated_gib=peak_alloc, peak_reserved_gib=peak_reserved,
        peak_rss_gib=dev.peak_rss_gib(), ppl=None, reference=reference,
        peak_tflops=c.peak_tflops, mem_bw_gbps=c.mem_bw_gbps, n_layers=n_layers,
        d_attn=d_attn, quality_note=quality_note,
        reference_note=(None if reference is not None else
                        "no reference: mcr_reference=none" if c.mcr_reference == "none"
                        else quality_note or "no reference"))
    image_tokens = int(sum((r["input_ids"] == vm.image_token_id(card, prompter)).sum().item()
                           for r in requests[c.warmup:][:1]))
    metrics = vm.vision_metrics(
        inference_metrics(measured), timings, window, batch_size=c.batch_size,
        image_tokens=image_tokens, task=c.task, scores=scores, reference=reference,
        weight_bytes=built.size.weight_bytes, quality_note=quality_note)
    info = {
        "task": c.task, "weights": built.weights, "weights_source": built.source,
        "dtype": built.dtype, "init_dtype": built.init_dtype,
        "total_params": built.size.total_params, "weight_bytes": built.size.weight_bytes,
        "device": c.device, "batch_size": c.batch_size, "prompt_tokens": prompt_tokens,
        "image_tokens_per_request": image_tokens, "new_tokens": c.new_tokens,
        "engine": engine.name, "engine_detail": engine.describe(), "engine_fallback": None,
        "attn_impl": built.attn_impl, "arch": card.arch, "threads": threads,
        "images": data.source, "items": len(items), "image_size": pictures[0].size,
        "processor": "local" if prompter.processor is not None else "byte+own",
        "measure_s": window.elapsed_s, "warmup_requests": len(warm),
        "measured_requests": len(timings), "quality_scored": scorable,
        "quality_items": scores.n, "quality_examples": scores.examples,
        "bleu_signature": scores.signature, "energy_note": window.energy_note,
        "quantization": ({"compute_dtype": built.dtype, **kernels}
                         if tech.quantization is not None else None),
        "mcr_quality": c.task if reference is not None and scores.quality is not None
        else None,
        "mcr_reference": None if reference is None else reference.dtype,
        "parts": vm.part_sizes(built.model, card.arch),
    }
    return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)


def _text_ids(prompter: vlm.Prompter, text: str) -> list[int]:
    """Token ids of plain text (calibration forwards carry no image)."""
    if prompter.processor is not None:
        return list(prompter.processor.tokenizer.encode(text))
    from runners.models.tokenizer import ByteTokenizer

    return ByteTokenizer().encode(text)


def language_excludes(model: Any, arch: str, exclude: str,
                      quantize_vision: bool) -> tuple[str, ...]:
    """The module patterns a VLM's quantization leaves alone: `--set exclude`'s, plus the
    vision tower and the projector unless `quantize_vision`."""
    patterns = quant.exclude_patterns(exclude)
    if not quantize_vision:
        prefixes = vlm.part_prefixes(model, arch)
        patterns += tuple(f"{prefixes[p]}*" for p in ("vision", "projector"))
    return patterns


def _quantize(fam: InferenceFamily, built: model_mod.BuiltModel,
              pool: Sequence[int]) -> tuple[model_mod.BuiltModel, dict[str, Any]]:
    """The language model quantized (the text path's quantization, runners.techniques
    .quantize); the vision tower and projector are excluded unless quantize_vision."""
    c, ctx = fam.config, fam.ctx
    q = fam.technique.quantization
    assert q is not None
    exclude = language_excludes(built.model, fam.card.arch, c.exclude, c.quantize_vision)
    q = quant.resolve(q, c.backend, c.device, fam.technique.compute_dtype(c.dtype, c.device))
    ctx.phase("quantize", technique=q.id, backend=q.backend, weights=q.weights,
              activations=q.activations, exclude=list(exclude))
    calibrate = None
    if q.calibrated:
        ids = torch.tensor([(list(pool) * 4)[:256]], dtype=torch.long, device=c.device)

        def calibrate() -> None:
            with torch.no_grad():
                vlm.part(built.model, fam.card.arch, "language")(input_ids=ids, use_cache=False)

    quant_backends.load_tuning(q.backend, ctx.home, c.device)
    quant.quantize(built.model, q, exclude, calibrate)
    from dataclasses import replace

    built = replace(built, size=replace(model_mod.measure(built.model),
                                        total_params=built.size.total_params))
    report = quant.kernel_report(built.model, c.device)
    report.update(backend=q.backend, backend_asked=c.backend, weights=q.weights,
                  activations=q.activations, group_size=q.group_size, exclude=list(exclude),
                  quantize_vision=c.quantize_vision)
    return built, report


def _score(fam: InferenceFamily, engine: VisionLoopEngine, items: Sequence[Any],
           batch_inputs: Any, prompter: vlm.Prompter, meter: WindowMeter | None
           ) -> vm.Scores:
    """Every item decoded greedily (up to QUALITY_TOKENS, cut at EOS) and scored, in window
    `quality` when `meter` is given (so its time is never part of the measured window)."""
    c, ctx = fam.config, fam.ctx
    ctx.phase("quality" if meter else "reference_quality", items=len(items))
    if meter is not None:
        meter.begin("quality")
    predictions: list[str] = []
    step = max(1, c.batch_size)
    for start in range(0, len(items), step):
        idx = list(range(start, min(start + step, len(items))))
        _, generated = engine(batch_inputs(idx), new_tokens=QUALITY_TOKENS[c.task])
        predictions += [prompter.decode(row.tolist()).strip() for row in generated]
    if meter is not None:
        ctx.emit(Event.window(**meter.end("quality").to_dict()))
    scores = vm.score(c.task, items, predictions)
    if not math.isfinite(scores.quality or 0.0):
        return vm.Scores.unscored(c.task)
    return scores
