"""The metrics of one inference run, from its timings, windows, sizes and perplexities.

Pure arithmetic over what the run measured (no torch), so every formula is unit-testable.
Definitions are DESIGN.md section 6's; the formulas live in profiling.metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from profiling import metrics as pm
from profiling.window import WindowResult
from runners.protocol import ENERGY_METRICS, NO_PEAK_NOTE, Metric, explain_missing
from runners.techniques import scoring

if TYPE_CHECKING:
    from runners.engines.decode import RequestTiming
    from runners.techniques.quality import Reference

SOURCE = "runner"


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything an inference run measured, ready to be turned into metrics."""

    timings: tuple[RequestTiming, ...]
    """One per measured request."""
    window: WindowResult
    """The `measure` window (every measured request, prefill and decode)."""
    prefill_window: WindowResult | None
    """The same requests' prefills replayed alone; None when not run."""
    batch_size: int
    prompt_tokens: int
    """Prompt length of each sequence."""
    new_tokens: int
    """Generated tokens of each sequence."""
    total_params: int
    weight_bytes: int
    """Bytes the model's tensors store (packed data + scales when quantized)."""
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    peak_rss_gib: float | None
    ppl: float | None
    """Perplexity on the held-out text."""
    reference: Reference | None
    """The uncompressed reference for MCR; None when not scored."""
    peak_tflops: float | None = None
    mem_bw_gbps: float | None = None
    n_layers: int = 0
    """Decoder layers (the attention term of the MFU FLOPs)."""
    d_attn: int = 0
    """Attention width: query heads x head dim."""
    quality_note: str | None = None
    """Why perplexity and MCR are None (random weights, eval_tokens=0)."""
    reference_note: str | None = None
    """Why there is no reference to compare sizes with (mcr_reference=none, out of memory)."""
    task_scores: tuple[scoring.TaskScore, ...] = ()
    """The `quality` tasks' scores (lm-eval); empty when none was asked for."""


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return math.fsum(xs) / len(xs) if xs else None


def _minus(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a < b:
        return None
    return a - b


def inference_metrics(m: Measured) -> list[Metric]:
    """The run's metrics; a value that could not be measured is None, never 0."""
    n_req = len(m.timings)
    b = m.batch_size
    latency = pm.latency_stats([t.latency_s for t in m.timings])
    ttft = pm.latency_stats([t.ttft_s for t in m.timings])
    tpots = [pm.tpot_s(t.latency_s, t.ttft_s, m.new_tokens) for t in m.timings]
    tpot = pm.latency_stats(tpots)
    generated = n_req * b * m.new_tokens
    prompt = n_req * b * m.prompt_tokens
    seconds = m.window.elapsed_s
    throughput = pm.it_tokens_per_s(generated, seconds)
    mean_ttft, mean_tpot = _mean([t.ttft_s for t in m.timings]), _mean(tpots)
    decode_tps = pm.it_tokens_per_s(b, mean_tpot)
    # MFU: 2N FLOPs per token through the model (Kaplan et al. 2020) plus the attention
    # term over each token's causal context, every sequence of every measured request,
    # over the whole measured window.
    flops = n_req * b * pm.inference_flops_per_sequence(
        m.total_params, m.prompt_tokens, m.new_tokens, n_layers=m.n_layers, d_attn=m.d_attn)
    flops_per_s = pm.it_tokens_per_s(flops, seconds)
    peak = m.peak_tflops * 1e12 if m.peak_tflops else None
    # Roofline: every decode step reads every weight byte once, so at most
    # bandwidth / weight bytes steps a second, each yielding one token a sequence.
    roofline = (b * m.mem_bw_gbps * 1e9 / m.weight_bytes
                if m.mem_bw_gbps and m.weight_bytes else None)

    energy = m.window.energy_j
    e_source = m.window.energy_source or SOURCE
    pw = m.prefill_window
    prefill_energy = pw.energy_j if pw is not None else None
    decode_energy = _minus(energy, prefill_energy)
    decoded = n_req * b * (m.new_tokens - 1)

    def metric(name: str, value: float | None, unit: str, source: str = SOURCE) -> Metric:
        return Metric(name, value, unit, source)

    notes: dict[str, str | None] = {name: m.window.energy_note for name in ENERGY_METRICS}
    prefill_note = (pw.energy_note if pw is not None
                    else "prefill not replayed alone (phase_windows off)")
    for name in ("prefill_energy_j", "prefill_j_per_token"):
        notes[name] = prefill_note
    for name in ("decode_energy_j", "decode_j_per_token"):
        notes[name] = m.window.energy_note if energy is None else prefill_note
    if peak is None:
        notes["mfu"] = NO_PEAK_NOTE
    if roofline is None:
        notes["roofline_fraction"] = ("no memory bandwidth for this device: measured on CUDA "
                                      "only; give --set mem_bw_gbps=N")
    return list(explain_missing([
        metric("al_s", latency["mean"], "s"),
        metric("al_p50_s", latency["p50"], "s"),
        metric("al_p90_s", latency["p90"], "s"),
        metric("al_p99_s", latency["p99"], "s"),
        metric("ttft_s", mean_ttft, "s"),
        metric("ttft_p50_s", ttft["p50"], "s"),
        metric("ttft_p90_s", ttft["p90"], "s"),
        metric("ttft_p99_s", ttft["p99"], "s"),
        metric("tpot_s", mean_tpot, "s"),
        metric("tpot_p50_s", tpot["p50"], "s"),
        metric("tpot_p90_s", tpot["p90"], "s"),
        metric("tpot_p99_s", tpot["p99"], "s"),
        metric("it", throughput, "tokens/s"),
        metric("tokens_per_s", throughput, "tokens/s"),
        metric("prefill_tokens_per_s", pm.it_tokens_per_s(b * m.prompt_tokens, mean_ttft),
               "tokens/s"),
        metric("decode_tokens_per_s", decode_tps, "tokens/s"),
        metric("roofline_fraction", None if roofline is None or decode_tps is None
               else decode_tps / roofline, "fraction"),
        metric("energy_j", energy, "J", e_source),
        metric("aec_w", pm.aec_w(energy, m.window.t0_ns, m.window.t1_ns), "W", e_source),
        metric("j_per_token", pm.j_per_token(energy, generated), "J/token", e_source),
        metric("prefill_energy_j", prefill_energy, "J", e_source),
        metric("prefill_j_per_token", pm.j_per_token(prefill_energy, prompt), "J/token",
               e_source),
        metric("decode_energy_j", decode_energy, "J", e_source),
        metric("decode_j_per_token", pm.j_per_token(decode_energy, decoded or None), "J/token",
               e_source),
        metric("peak_allocated_gib", m.peak_allocated_gib, "GiB"),
        metric("peak_reserved_gib", m.peak_reserved_gib, "GiB"),
        metric("peak_rss_gib", m.peak_rss_gib, "GiB"),
        metric("total_params", float(m.total_params), "params"),
        metric("mfu", pm.mfu(flops_per_s, peak), "fraction"),
    ], notes)) + quality_metrics(m.weight_bytes, m.ppl, m.reference, m.task_scores,
                                 quality_note=m.quality_note, reference_note=m.reference_note)


def quality_metrics(weight_bytes: int, ppl: float | None, ref: Reference | None,
                    task_scores: Sequence[scoring.TaskScore], *, quality_note: str | None,
                    reference_note: str | None) -> list[Metric]:
    """What the model keeps against its uncompressed reference: sizes, perplexities, task
    scores and MCR (its quality: the mean task accuracy when tasks were scored, else
    1 / perplexity). Also the whole result of an `efficientllm eval` re-score."""
    ref_bytes = ref.weight_bytes if ref is not None else None
    task_quality = scoring.mean(task_scores)
    if task_quality is not None:
        quality: float | None = task_quality
        ref_quality = ref.task_quality if ref is not None else None
    else:
        quality = pm.quality_from_perplexity(ppl)
        ref_quality = pm.quality_from_perplexity(ref.ppl) if ref is not None else None
    notes: dict[str, str | None] = {}
    for name in ("eval_ppl", "reference_ppl", "mcr"):
        notes[name] = quality_note or reference_note
    for name in ("reference_weight_bytes", "compression_ratio"):
        notes[name] = reference_note
    return list(explain_missing([
        Metric("weight_bytes", float(weight_bytes), "bytes", SOURCE),
        Metric("eval_ppl", ppl, "ppl", SOURCE),
        Metric("reference_ppl", ref.ppl if ref is not None else None, "ppl", SOURCE),
        Metric("reference_weight_bytes", float(ref_bytes) if ref_bytes else None, "bytes",
               SOURCE),
        Metric("compression_ratio", ref_bytes / weight_bytes
               if ref_bytes and weight_bytes > 0 else None, "ratio", SOURCE),
        Metric("mcr", pm.mcr(ref_bytes, weight_bytes, ref_quality, quality), "ratio", SOURCE),
        *(scoring.metrics(task_scores, quality_note) if task_scores else ()),
    ], notes))
