"""The pretraining family: train one architecture variant from random weights for N steps on
a token stream, timing every step, then score held-out perplexity.

Each technique changes one dimension of the baseline decoder (GQA + RoPE + dense SwiGLU, the
Qwen2.5 recipe the paper pretrained), or swaps the whole architecture for a transformers
baseline (Mamba, RWKV, Pythia) matched to the baseline's parameter count; `matching` in the
result says which rule held and what it cost in parameters and FLOPs.

Shape of a run (nanoGPT's bench.py pattern): read the stream and plan every step's windows
first, so data prep is never timed; measure the device's bf16 matmul peak (CUDA); run `warmup`
optimizer steps in a window of their own (with `compile` on, a forward and backward pass before
them, outside every window, compiles first: no optimizer step, so the weights the warm-up
starts from are unchanged); reset the peak-memory counters; run `steps` steps in
the `measure` window (energy read only at its edges, after a device sync), each step synced so
its latency is real; then the held-out perplexity. Steps: bf16 autocast on CUDA (fp32
master weights), the shared chunked cross-entropy, gradient clipping, fused AdamW on CUDA, linear
warm-up then cosine decay of the learning rate over warmup + steps.

MFU = tokens/s x FLOPs per token / peak, FLOPs per token = 6 N + 12 L d T (Kaplan et al. 2020;
the attention term of PaLM, Chowdhery et al. 2022, appendix B): N the parameters that multiply
a token (MoE: the active ones; lookup tables excluded), L layers, d = heads x head width,
T = seq_len (the full square, causal masking not halved, as PaLM and nanoGPT count it; NSA:
the keys its three branches meet, runners.models.decoder.Decoder.attention_context).
Recomputation under activation checkpointing is not counted (model FLOPs, not hardware FLOPs).

Run-time options that leave the model and its math alone (each resolved value is in the
result's info): `compile` (torch.compile of each decoder block and of the loss's per-chunk
softmax; `auto`: on for decoder variants on CUDA), `checkpointing` (activation checkpointing;
`auto`: on for Mamba without its fused kernels, whose reference path cannot keep every
layer's activations), `loss_kernel` (`auto`: liger-kernel's fused linear cross-entropy on
CUDA where it is installed, else the chunked torch loss, which on CUDA accumulates its weight
gradient in fp32 inside the GEMM, `LossOptions.fp32_gemm`) and `recurrence` (Mamba's scan
and RWKV's WKV: runners.models.baselines).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import torch

from profiling import metrics as pm
from profiling.window import WindowMeter, WindowResult
from runners import distributed
from runners.data import textstream
from runners.engines import xent
from runners.engines.compilation import compile_decoder, dynamo_stats, eager_if
from runners.engines.xent import LossOptions, fp32_gemm_status
from runners.errors import BadInput
from runners.families.base import Family, register
from runners.families.pretraining_config import PretrainingConfig, lr_at, measure_matmul_tflops
from runners.kernels.nsa import NSAShape
from runners.models import baselines
from runners.models.decoder import Decoder, ParamCounts
from runners.protocol import (
    ENERGY_METRICS,
    NO_PEAK_NOTE,
    Event,
    Metric,
    RunResult,
    explain_missing,
)
from runners.system import device as dev
from runners.techniques.architecture import (
    BASELINE,
    BASELINE_RULE,
    VARIANTS,
    Variant,
    decoder_config,
    decoder_rule,
    facts,
)

SOURCE = "runner"
LOSS_TAIL_STEPS = 5
"""`loss` is the mean cross-entropy of the last this-many measured steps."""


class StepOut(NamedTuple):
    latency_s: float
    loss: float
    """Cross-entropy (nats), the aux loss left out."""
    aux: float | None
    lr: float
    grad_norm: float | None


@register
class PretrainingFamily(Family[PretrainingConfig]):
    """Cost (throughput, latency, memory, energy, MFU) and quality of one architecture."""

    name = "pretraining"
    config_type = PretrainingConfig
    techniques = frozenset(VARIANTS)

    _model: Any = None
    _counts: ParamCounts | None = None

    def validate(self) -> None:
        super().validate()  # random weights, positions: runners.params.pair_problem
        c = self.config
        try:
            xent.resolve_loss_kernel(c.loss_kernel, c.device)
        except ValueError as e:
            raise BadInput(str(e)) from None
        if VARIANTS[c.technique].baseline in ("mamba", "rwkv"):
            baselines.check_recurrence(c.recurrence, c.device, VARIANTS[c.technique].baseline)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        c, ctx = self.config, self.ctx
        variant = VARIANTS[c.technique]
        ctx.phase("load", model=c.model, technique=c.technique)
        threads = dev.set_threads(c.threads)
        total_steps = c.warmup + c.steps
        text = textstream.load(c.dataset, need_tokens=total_steps * c.batch_size * c.seq_len + 1,
                               eval_tokens=c.eval_tokens)
        cuda = c.device.startswith("cuda")
        autocast_dtype = self._autocast_dtype()

        model, matching = self._build(variant)
        checkpointing = self._apply_checkpointing(model)
        compile_on = self._compile_wanted(model)
        loss_kernel = xent.resolve_loss_kernel(c.loss_kernel, c.device)
        model.loss_options = LossOptions(kernel=loss_kernel,
                                         compiled=compile_on and loss_kernel == "torch",
                                         fp32_gemm=cuda)
        counts = self._counts = model.param_counts()
        n_layers, d_attn = model.attention_shape()
        context = _attention_context(model, c.seq_len)
        flops_per_token = pm.flops_per_token(counts.flop, training=True, n_layers=n_layers,
                                             d_attn=d_attn, context_len=context)
        forward_loss = distributed.loss_forward(model, distributed.current())  # DDP/FSDP2
        optimizer = self._optimizer(model, cuda)

        # Every step's windows are planned and on the device before any window opens.
        plan = textstream.WindowPlan(len(text.train), c.batch_size, c.seq_len,
                                     distributed.data_seed(c.seed))
        ids = _to_tensor(text.train, c.device)
        starts = torch.tensor([plan.starts(s) for s in range(total_steps)], dtype=torch.long,
                              device=c.device)
        offsets = torch.arange(c.seq_len + 1, device=c.device)
        warm_lr = c.lr_warmup_steps if c.lr_warmup_steps >= 0 else max(1, total_steps // 10)
        sync = dev.sync_fn(c.device)

        peak_tflops, peak_source = c.peak_tflops, "given" if c.peak_tflops else None
        if peak_tflops is None and cuda and c.measure_peak:
            ctx.phase("peak")
            peak_tflops, peak_source = measure_matmul_tflops(c.device), "measured"

        def step(i: int) -> StepOut:
            t0 = time.perf_counter()
            rows = ids[(starts[i][:, None] + offsets) % ids.shape[0]]
            lr = lr_at(i, total_steps, c.lr, warm_lr, c.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with self._autocast(autocast_dtype):
                out = forward_loss(rows[:, :-1], rows[:, 1:],
                                   chunk_rows=c.loss_chunk_tokens or None)
            out.loss.backward()
            norm = distributed.plain(torch.nn.utils.clip_grad_norm_(
                model.parameters(), c.grad_clip)) if c.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            parts = [out.ce.detach()] + [t.detach().float() for t in (out.aux, norm)
                                         if t is not None]
            if sync is not None:
                sync()
            values = torch.stack(parts).tolist()
            latency = time.perf_counter() - t0
            aux = values[1] if out.aux is not None else None
            return StepOut(latency, values[0], aux, lr, values[-1] if norm is not None else None)

        compiled = compile_decoder(model, compile_on,
                                   ids[(starts[0][:, None] + offsets) % ids.shape[0]],
                                   requested=c.compile, chunk_rows=c.loss_chunk_tokens or None,
                                   autocast=lambda: self._autocast(autocast_dtype), sync=sync,
                                   ctx=ctx)
        meter = dev.window_meter(c.device, sync, ctx.sample_device)
        warm, _ = self._steps("warmup", range(c.warmup), step, meter)
        graphs_before = dynamo_stats()[0]
        dev.reset_peak_memory(c.device)
        measured, window = self._steps("measure", range(c.warmup, total_steps), step, meter)
        assert window is not None  # steps >= 1 (RunSpec checks it)
        peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)
        if compiled["enabled"]:
            compiled["graphs_compiled_in_measure"] = dynamo_stats()[0] - graphs_before
        model_facts = facts(model, variant, c.moe_match,
                            native_gqa=cuda and autocast_dtype is not None)

        ppl = None
        if c.eval_tokens and len(text.heldout) >= 2:
            ctx.phase("eval", tokens=len(text.heldout))
            with eager_if(compiled["enabled"]):  # eval shapes and no_grad: no recompiles
                ppl = self._perplexity(model, text.heldout, autocast_dtype)
        checkpoint = self._save(model, variant) if c.save and distributed.saves() else None

        metrics = self._metrics(measured, window, counts, flops_per_token, peak_tflops,
                                peak_alloc, peak_reserved, ppl)
        info: dict[str, Any] = {
            "weights": "random", "group": variant.group, "variant": variant.describe(),
            "matching": matching, "total_params": counts.total, "active_params": counts.active,
            "flop_params": counts.flop, "flops_per_token": flops_per_token,
            "mfu_formula": "6*flop_params + 12*layers*d_attn*context per trained token "
                           f"(layers={n_layers}, d_attn={d_attn}, context={context}: keys a "
                           "query meets, seq_len for dense attention)",
            "peak_tflops": peak_tflops, "peak_source": peak_source,
            "precision": "bf16-autocast" if autocast_dtype else "fp32", "device": c.device,
            "batch_size": c.batch_size, "seq_len": c.seq_len, "steps": c.steps,
            "warmup": c.warmup, "lr": c.lr, "lr_warmup_steps": warm_lr,
            "optimizer": "AdamW (fused)" if cuda else "AdamW (foreach)",
            "loss_impl": "chunked linear cross-entropy (runners.engines.xent), "
                    f"{c.loss_chunk_tokens or 'auto'} rows a chunk, "
                    f"{_loss_describe(model.loss_options)}",
            "loss_kernel": model.loss_options.kernel,
            "compile": compiled, "activation_checkpointing": checkpointing,
            "tokenizer": "byte", "vocab_size": self.card.vocab_size, "text": text.source,
            "train_tokens": len(text.train), "documents": text.documents,
            "dataset_truncated": text.truncated, "epochs": plan.epochs(total_steps),
            "eval_tokens": len(text.heldout) if ppl is not None else 0, "threads": threads,
            "measure_s": window.elapsed_s, "warmup_steps_run": len(warm),
            "energy_note": window.energy_note, "checkpoint": checkpoint,
            "final_loss": measured[-1].loss,
        }
        info.update(model_facts)
        return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)

    # -- pieces of run -----------------------------------------------------------------------

    def _autocast_dtype(self) -> torch.dtype | None:
        c = self.config
        if c.precision == "fp32" or (c.precision == "auto" and not c.device.startswith("cuda")):
            return None
        return torch.bfloat16

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.config.device).type, dtype=dtype)

    def _build(self, variant: Variant) -> tuple[Any, dict[str, Any]]:
        """The model on the device (fp32 weights, training mode) and its matching facts."""
        c, card = self.config, self.card
        base_cfg = self._decoder_config(BASELINE)
        with torch.device("meta"):
            base = Decoder(base_cfg)
        base_counts = base.param_counts()
        base_flops = pm.flops_per_token(base_counts.flop, training=True, n_layers=card.num_layers,
                                        d_attn=card.hidden_size, context_len=c.seq_len)
        torch.manual_seed(c.seed)
        if variant.baseline is not None:
            model: Any = baselines.build(variant.baseline, card, c.seq_len, c.device, c.seed,
                                         base_counts.total, c.recurrence)
            rule = BASELINE_RULE.format(width=model.describe()["width_name"])
        else:
            cfg = self._decoder_config(variant)
            with torch.device(c.device):
                model = Decoder(cfg)
            rule = decoder_rule(variant, cfg)
        self._model = model
        counts = model.param_counts()
        layers, d_attn = model.attention_shape()
        flops = pm.flops_per_token(counts.flop, training=True, n_layers=layers, d_attn=d_attn,
                                   context_len=_attention_context(model, c.seq_len))
        matching = {
            "rule": rule, "baseline": "gqa+rope+dense decoder",
            "baseline_total_params": base_counts.total, "total_params": counts.total,
            "active_params": counts.active, "delta_params": counts.total - base_counts.total,
            "delta_params_pct": 100.0 * (counts.total - base_counts.total) / base_counts.total,
            "baseline_flops_per_token": base_flops, "flops_per_token": flops,
            "delta_flops_pct": 100.0 * (flops - base_flops) / base_flops,
        }
        return model, matching

    def _apply_checkpointing(self, model: Any) -> bool:
        """Resolve `checkpointing` and turn it on in the model; returns whether it is on."""
        c = self.config
        if c.checkpointing == "auto":
            on = isinstance(model, baselines.LanguageModel) and model.kind == "mamba" \
                and not baselines.mamba_fused_available()
        else:
            on = c.checkpointing == "true"
        if isinstance(model, Decoder):
            model.checkpoint_blocks = on
        else:
            model.set_checkpointing(on)
        return on

    def _compile_wanted(self, model: Any) -> bool:
        """`compile` resolved: only the decoder compiles (`auto`: on CUDA)."""
        c = self.config
        if not isinstance(model, Decoder) or c.compile == "false":
            return False
        return c.compile == "true" or c.device.startswith("cuda")

    def _decoder_config(self, variant: Variant) -> Any:
        c = self.config
        return decoder_config(self.card, variant, c.seq_len, experts=c.experts, top_k=c.top_k,
                              moe_match=c.moe_match, aux_loss_coef=c.aux_loss_coef,
                              nsa=NSAShape(c.nsa_block, c.nsa_blocks, c.nsa_window))

    def _optimizer(self, model: Any, cuda: bool) -> torch.optim.Optimizer:
        """AdamW; matrices decay, vectors (norms, biases) do not; fused kernels on CUDA."""
        c = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2],
                   "weight_decay": c.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=c.lr,
                                 betas=(0.9, c.beta2), eps=1e-8,
                                 **({"fused": True} if cuda else {}))

    def _steps(self, phase: str, indices: range, step: Callable[[int], StepOut],
               meter: WindowMeter) -> tuple[list[StepOut], WindowResult | None]:
        """Run optimizer steps `indices` inside window `phase`, one step event each."""
        c, ctx = self.config, self.ctx
        ctx.phase(phase, steps=len(indices))
        if not indices:
            return [], None
        outs: list[StepOut] = []
        meter.begin(phase)
        for i in indices:
            out = step(i)
            outs.append(out)
            extra = {k: v for k, v in (("aux_loss", out.aux), ("grad_norm", out.grad_norm))
                     if v is not None}
            ctx.emit(Event.step(step=i, phase=phase, latency_s=out.latency_s,
                                tokens=c.batch_size * c.seq_len, samples=c.batch_size,
                                loss=out.loss, lr=out.lr, **extra))
        window = meter.end(phase)
        ctx.emit(Event.window(**window.to_dict()))
        return outs, window

    def _perplexity(self, model: Any, heldout: Sequence[int],
                    autocast_dtype: torch.dtype | None) -> float | None:
        """exp(mean NLL) of the held-out ids, in windows of seq_len + 1 (targets weighted)."""
        c = self.config
        ids = _to_tensor(heldout, c.device)
        nll, count = 0.0, 0
        model.eval()
        try:
            with torch.no_grad(), self._autocast(autocast_dtype), distributed.gathered():
                full = (len(ids) - 1) // c.seq_len
                if full:
                    rows = ids[: full * c.seq_len + 1]
                    x = rows[:-1].view(full, c.seq_len)
                    y = rows[1:].view(full, c.seq_len)
                    out = model.forward_loss(x, y)
                    nll += float(out.ce) * x.numel()
                    count += x.numel()
                rest = ids[full * c.seq_len:]
                if len(rest) >= 2:
                    out = model.forward_loss(rest[None, :-1], rest[None, 1:])
                    nll += float(out.ce) * (len(rest) - 1)
                    count += len(rest) - 1
        finally:
            model.train()
        if not count:
            return None
        mean = nll / count
        return math.exp(mean) if math.isfinite(mean) and mean < 700 else None

    def _save(self, model: Any, variant: Variant) -> str:
        c = self.config
        path = self.ctx.run_dir / "checkpoint.pt"
        cfg = asdict(model.cfg) if isinstance(model, Decoder) else model.hf.config.to_dict()
        torch.save({"technique": c.technique, "model": c.model, "variant": variant.describe(),
                    "config": cfg, "steps": c.warmup + c.steps,
                    "state_dict": model.state_dict()}, path)
        return str(path)

    def _metrics(self, steps: Sequence[StepOut], window: WindowResult, counts: ParamCounts,
                 flops_per_token: float, peak_tflops: float | None, peak_alloc: float | None,
                 peak_reserved: float | None, ppl: float | None) -> list[Metric]:
        c = self.config
        stats = pm.latency_stats([s.latency_s for s in steps])
        tokens = len(steps) * c.batch_size * c.seq_len
        seconds = window.elapsed_s
        tokens_per_s = pm.it_tokens_per_s(tokens, seconds)
        energy = window.energy_j
        energy_source = window.energy_source or SOURCE
        flops_per_s = None if tokens_per_s is None else tokens_per_s * flops_per_token
        peak = peak_tflops * 1e12 if peak_tflops else None
        tail = [s.loss for s in steps[-LOSS_TAIL_STEPS:]]
        auxes = [s.aux for s in steps if s.aux is not None]

        def m(name: str, value: float | None, unit: str, source: str = SOURCE) -> Metric:
            return Metric(name, value, unit, source)

        notes: dict[str, str | None] = {name: window.energy_note for name in ENERGY_METRICS}
        if peak is None:
            notes["mfu"] = NO_PEAK_NOTE
        if ppl is None:
            notes["eval_ppl"] = ("not scored: eval_tokens=0" if c.eval_tokens == 0 else
                                 "no finite held-out perplexity (fewer than 2 held-out tokens, "
                                 "or a non-finite loss)")
        out = [
            m("al_s", stats["mean"], "s"),
            m("al_p50_s", stats["p50"], "s"),
            m("al_p90_s", stats["p90"], "s"),
            m("al_p99_s", stats["p99"], "s"),
            m("tt", pm.tt(tokens, counts.total, seconds), "tokens/param/s"),
            m("tokens_per_s", tokens_per_s, "tokens/s"),
            m("samples_per_s", pm.it_tokens_per_s(len(steps) * c.batch_size, seconds),
              "samples/s"),
            m("energy_j", energy, "J", energy_source),
            m("aec_w", pm.aec_w(energy, window.t0_ns, window.t1_ns), "W", energy_source),
            m("j_per_token", pm.j_per_token(energy, tokens), "J/token", energy_source),
            m("peak_allocated_gib", peak_alloc, "GiB"),
            m("peak_reserved_gib", peak_reserved, "GiB"),
            m("total_params", float(counts.total), "params"),
            m("active_params", float(counts.active), "params"),
            m("trainable_params", float(counts.total), "params"),
            m("mfu", pm.mfu(flops_per_s, peak), "fraction"),
            m("loss", sum(tail) / len(tail), "nats/token"),
            m("eval_ppl", ppl, "ppl"),
        ]
        if auxes:
            out.append(m("aux_loss", sum(auxes) / len(auxes), "ratio"))
        return list(explain_missing(out, notes))

    def failure_info(self) -> Mapping[str, Any]:
        c = self.config
        info = {"batch_size": c.batch_size, "seq_len": c.seq_len, "device": c.device,
                "technique": c.technique, "group": VARIANTS[c.technique].group}
        if self._counts is not None:
            info.update(total_params=self._counts.total, active_params=self._counts.active)
        elif self._model is not None:
            info["total_params"] = sum(p.numel() for p in self._model.parameters())
        return info


def _loss_describe(options: LossOptions) -> str:
    text = options.describe()
    ok, error = fp32_gemm_status()
    if options.fp32_gemm and options.kernel == "torch" and ok is False:
        text += f" (fp32 GEMM unavailable, plain accumulation: {error})"
    return text


def _attention_context(model: Any, seq_len: int) -> int:
    """Keys a query meets in the attention FLOPs (seq_len but for NSA's sparse attention)."""
    return model.attention_context(seq_len) if isinstance(model, Decoder) else seq_len


def _to_tensor(ids: Sequence[int], device: str) -> torch.Tensor:
    """A long tensor of ids on the device (from an array of uint16 without a Python list)."""
    if hasattr(ids, "typecode") and ids.typecode == "H":
        raw = torch.frombuffer(bytearray(ids.tobytes()), dtype=torch.int16)
        return raw.to(torch.long).bitwise_and_(0xFFFF).to(device)
    return torch.tensor(list(ids), dtype=torch.long, device=device)
