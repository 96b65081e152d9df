"""The inference family: time prefill and forced-length greedy decode of a model in one
precision, then score it on held-out text.

Shape of a run (nanoGPT's bench.py pattern): build the requests first, so data prep is
never timed; run `warmup` requests in a window of their own; reset the peak-memory
counters; run `steps` requests inside the `measure` window (energy is read only at its
edges, after a device sync); then compute the perplexity of the held-out slice. Each
request is `batch_size` prompts of exactly `seq_len` tokens decoding exactly `new_tokens`
tokens (EOS ignored), so runs of different techniques do the same work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from profiling import metrics as pm
from profiling.window import WindowMeter, WindowResult, rapl_energy_reader
from runners import corpus as corpus_mod
from runners import device as dev
from runners import model as model_mod
from runners.decode import ENGINES, Engine, RequestTiming
from runners.errors import BadInput, Unsupported
from runners.family import Family, FamilyConfig, register
from runners.protocol import Event, Metric, RunResult
from runners.tokenizer import ByteTokenizer

SOURCE = "runner"
PPL_CHUNK_TOKENS = 1024
"""Longest sequence one perplexity forward sees (longer held-out text is chunked)."""
DISTINCT_REQUESTS = 64
"""Distinct prompt batches built per run; longer runs cycle through them."""


@dataclass(frozen=True, slots=True)
class Precision:
    """A technique that runs the model with its weights in one floating dtype.

    Weight-quantization techniques (quanto int8/int4/fp8) will be subclasses whose
    `prepare` quantizes the model built in `dtype`.
    """

    id: str
    dtype: str
    """torch dtype name the weights are held (or built) in."""

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def prepare(self, built: model_mod.BuiltModel) -> model_mod.BuiltModel:
        return built


TECHNIQUES: dict[str, Precision] = {
    t.id: t for t in (Precision("fp32", "float32"), Precision("bf16", "bfloat16"),
                      Precision("fp16", "float16"))
}
"""Implemented inference techniques; other catalog ids of the family are `unsupported`."""


@dataclass(frozen=True)
class InferenceConfig(FamilyConfig):
    """An inference run: the RunSpec's fields plus the `--set` parameters below."""

    family: ClassVar[str] = "inference"

    engine: str = "loop"
    """`loop`: the runner's own prefill + decode loop over a KV cache (default);
    `eager`: `model.generate()`, the library baseline."""
    peak_tflops: float | None = field(default=None, metadata={"kind": float})
    """Dense peak of the device in TFLOP/s for `mfu` (bf16 peak on GPUs); None: no mfu."""
    threads: int | None = field(default=None, metadata={"kind": int})
    """torch intra-op threads; None: one fewer than the CPUs this process may use."""
    eval_tokens: int = 512
    """Held-out tokens scored for `eval_ppl`; 0 skips the evaluation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise BadInput(f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise BadInput(f"peak_tflops must be positive, got {self.peak_tflops!r}")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"threads must be at least 1, got {self.threads!r}")
        if self.eval_tokens < 0 or self.eval_tokens == 1:
            raise BadInput(f"eval_tokens must be 0 (skip) or at least 2, got {self.eval_tokens}")


@register
class InferenceFamily(Family[InferenceConfig]):
    """Latency, throughput, energy and perplexity of one model x precision."""

    name = "inference"
    config_type = InferenceConfig
    techniques = frozenset(TECHNIQUES)

    _built: model_mod.BuiltModel | None = None

    def validate(self) -> None:
        c, card = self.config, self.card
        if c.seq_len + c.new_tokens > card.max_position:
            raise BadInput(f"seq_len + new_tokens = {c.seq_len + c.new_tokens} exceeds "
                           f"{card.id}'s {card.max_position} positions")

    def run(self) -> RunResult:
        c, ctx = self.config, self.ctx
        ctx.phase("load", model=c.model, technique=c.technique)
        threads = dev.set_threads(c.threads)
        tokenizer = ByteTokenizer()
        text = corpus_mod.load(c.dataset, c.eval_tokens, tokenizer)
        technique = TECHNIQUES[c.technique]
        built = technique.prepare(model_mod.build(self.card, technique.torch_dtype(),
                                                  c.device, c.seed))
        self._built = built
        self._probe(built)

        # Requests are built before any window opens, so data prep is never timed. Past
        # DISTINCT_REQUESTS they repeat: the content of a prompt does not change its cost.
        sampler = corpus_mod.PromptSampler(text.pool, c.seq_len, c.seed)
        distinct = [torch.tensor(sampler.batch(c.batch_size), dtype=torch.long, device=c.device)
                    for _ in range(min(c.warmup + c.steps, DISTINCT_REQUESTS))]
        requests = [distinct[i % len(distinct)] for i in range(c.warmup + c.steps)]
        sync = dev.sync_fn(c.device)
        pad = self.card.pad_token_id if self.card.pad_token_id is not None else \
            tokenizer.pad_token_id
        engine = ENGINES[c.engine](built.model, c.new_tokens, sync, pad)
        meter = self._meter(sync)

        warm, _ = self._requests("warmup", requests[:c.warmup], engine, meter)
        dev.reset_peak_memory(c.device)
        timings, window = self._requests("measure", requests[c.warmup:], engine, meter)
        assert window is not None  # steps >= 1 (RunSpec checks it)
        peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)

        ppl = None
        if c.eval_tokens:
            ctx.phase("eval", tokens=len(text.heldout))
            ppl = perplexity(built.model, text.heldout, c.device,
                             min(PPL_CHUNK_TOKENS, self.card.max_position))

        metrics = self._metrics(timings, window, peak_alloc, peak_reserved, ppl)
        info = {
            "weights": built.weights, "dtype": built.dtype, "init_dtype": built.init_dtype,
            "total_params": built.size.total_params, "weight_bytes": built.size.weight_bytes,
            "device": c.device, "batch_size": c.batch_size, "prompt_tokens": c.seq_len,
            "new_tokens": c.new_tokens, "engine": engine.name, "attn_impl": built.attn_impl,
            "arch": self.card.arch, "tokenizer": "byte", "threads": threads,
            "text": text.source, "eval_tokens": len(text.heldout) if c.eval_tokens else 0,
            "measure_s": window.elapsed_s, "warmup_requests": len(warm),
            "measured_requests": len(timings), "peak_tflops": c.peak_tflops,
            "mfu_flops_per_token": self._flops_per_token(),
            "energy_note": window.energy_note,
        }
        return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)

    # -- pieces of run -------------------------------------------------------------------------

    def _probe(self, built: model_mod.BuiltModel) -> None:
        """One tiny forward, so a dtype the device's kernels lack fails as `unsupported`."""
        c = self.config
        x = torch.zeros((1, 2), dtype=torch.long, device=c.device)
        try:
            with torch.inference_mode():
                built.model(input_ids=x, use_cache=False)
        except (RuntimeError, NotImplementedError) as e:
            text = str(e)
            if "not implemented for" in text or isinstance(e, NotImplementedError):
                raise Unsupported(f"{c.technique} ({built.dtype}) does not run on {c.device} "
                                  f"with torch {torch.__version__}: "
                                  f"{text.splitlines()[0] if text else type(e).__name__}"
                                  ) from None
            raise

    def _meter(self, sync: Any) -> WindowMeter:
        """Windows on this run's device; CPU energy from RAPL where readable."""
        reader, source = None, None
        if self.config.device == "cpu":
            reader = rapl_energy_reader()
            source = "rapl" if reader is not None else None
        # CUDA: the NVML energy counter is read by profiling, not here, until profiling
        # offers a reader for it; until then energy_j is None and ingest integrates power.
        return WindowMeter(sync=sync, energy_reader=reader, device=self.ctx.sample_device,
                           energy_source=source)

    def _requests(self, phase: str, batches: Sequence[torch.Tensor], engine: Engine,
                  meter: WindowMeter) -> tuple[list[RequestTiming], WindowResult | None]:
        """Run `batches` as requests inside window `phase`, one step event each."""
        c, ctx = self.config, self.ctx
        ctx.phase(phase, steps=len(batches))
        if not batches:
            return [], None
        timings: list[RequestTiming] = []
        meter.begin(phase)
        for i, input_ids in enumerate(batches):
            timing, _ = engine(input_ids)
            timings.append(timing)
            ctx.emit(Event.step(step=i, phase=phase, latency_s=timing.latency_s,
                                tokens=c.batch_size * c.new_tokens, samples=c.batch_size,
                                ttft_s=timing.ttft_s, prompt_tokens=c.batch_size * c.seq_len))
        window = meter.end(phase)
        ctx.emit(Event.window(**window.to_dict()))
        return timings, window

    def _flops_per_token(self) -> float | None:
        if self._built is None:
            return None
        # DESIGN.md section 6: 2N FLOPs per inferred token (Kaplan et al. 2020).
        return pm.flops_per_token(self._built.size.total_params, training=False)

    def _metrics(self, timings: Sequence[RequestTiming], window: WindowResult,
                 peak_alloc: float | None, peak_reserved: float | None,
                 ppl: float | None) -> list[Metric]:
        c = self.config
        assert self._built is not None
        stats = pm.latency_stats([t.latency_s for t in timings])
        tpots = [pm.tpot_s(t.latency_s, t.ttft_s, c.new_tokens) for t in timings]
        tokens = len(timings) * c.batch_size * c.new_tokens
        seconds = window.elapsed_s
        throughput = pm.it_tokens_per_s(tokens, seconds)
        energy = window.energy_j
        energy_source = window.energy_source or SOURCE
        flops_per_s = None if throughput is None else throughput * (self._flops_per_token() or 0)
        peak = c.peak_tflops * 1e12 if c.peak_tflops else None
        size = self._built.size

        def m(name: str, value: float | None, unit: str, source: str = SOURCE) -> Metric:
            return Metric(name, value, unit, source)

        return [
            m("al_s", stats["mean"], "s"),
            m("al_p50_s", stats["p50"], "s"),
            m("al_p90_s", stats["p90"], "s"),
            m("al_p99_s", stats["p99"], "s"),
            m("ttft_s", _mean([t.ttft_s for t in timings]), "s"),
            m("tpot_s", _mean(tpots), "s"),
            m("it", throughput, "tokens/s"),
            m("tokens_per_s", throughput, "tokens/s"),
            m("energy_j", energy, "J", energy_source),
            m("aec_w", pm.aec_w(energy, window.t0_ns, window.t1_ns), "W", energy_source),
            m("j_per_token", pm.j_per_token(energy, tokens), "J/token", energy_source),
            m("peak_allocated_gib", peak_alloc, "GiB"),
            m("peak_reserved_gib", peak_reserved, "GiB"),
            m("total_params", float(size.total_params), "params"),
            m("weight_bytes", float(size.weight_bytes), "bytes"),
            m("mfu", pm.mfu(flops_per_s, peak), "fraction"),
            m("eval_ppl", ppl, "ppl"),
        ]

    def failure_info(self) -> Mapping[str, Any]:
        info = dict(super().failure_info())
        info["engine"] = self.config.engine
        if self._built is not None:
            info.update(dtype=self._built.dtype, total_params=self._built.size.total_params,
                        weight_bytes=self._built.size.weight_bytes, weights=self._built.weights)
        return info


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return math.fsum(xs) / len(xs) if xs else None


def perplexity(model: Any, ids: Sequence[int], device: str, chunk_tokens: int) -> float | None:
    """exp(mean next-token NLL) of `ids`, scored in chunks of at most `chunk_tokens`.

    Each chunk predicts its own tokens 2..n; chunks are weighted by their predictions.
    None when fewer than two ids (nothing to predict) or the loss is not finite.
    """
    if len(ids) < 2:
        return None
    nll_sum = 0.0
    count = 0
    with torch.inference_mode():
        for start in range(0, len(ids), chunk_tokens):
            chunk = ids[start:start + chunk_tokens]
            if len(chunk) < 2:
                continue
            x = torch.tensor([list(chunk)], dtype=torch.long, device=device)
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            nll_sum += float(loss) * (len(chunk) - 1)
            count += len(chunk) - 1
    if count == 0:
        return None
    mean = nll_sum / count
    if not math.isfinite(mean) or mean > 700:  # exp overflows a float beyond ~709
        return None
    return math.exp(mean)
