"""The finetuning family: train one model under one technique (full, freeze, or a peft
method) on instruction data, and measure the step: ST, AL, memory, energy, MFU, loss.

Shape of a run (the nanoGPT bench.py pattern, as in inference): load the model and apply
the technique; read and tokenise the data and build every micro-batch before any window
opens, so data prep is never timed; make the optimizer; run `warmup` optimizer steps in a
window of their own (they train, but are not measured); reset the peak-memory counters; run
`steps` optimizer steps inside the `measure` window (energy read at its edges, after a
device sync); score the held-out examples; save what was trained under RUN_DIR/adapter/.

The loop is `runners.engines.training.TrainStep` (no transformers Trainer in the measured path);
the loss is the chunked cross-entropy of `runners.engines.training`, so large vocabularies never
materialise full fp32 logits. With `compile` (default `auto`: on CUDA, for full and the
plain-LoRA family) the decoder blocks are torch.compile'd, which fuses the elementwise work
around the matmuls (norms, RoPE, SwiGLU, residual adds, and LoRA's dropout, scale and add);
the compilation runs in a `compile` phase before the warm-up window, and a compiler failure
falls back to eager (runners.engines.compilation).

Model FLOPs per trained token, the numerator of `mfu` (N = every parameter of the model as
trained, adapters included; L layers, d = heads x head dim, T = sequence length; the
conventions of Kaplan et al. 2020 and PaLM appendix B):

    2N                     forward
  + 2 N_path               backward to activations, through every block from the lowest
                           trained one up (N_path = N less the blocks below it)
  + 2 N_trainable          backward to the trained weights
  + 4 L d T + 8 L_path d T attention scores and values, forward and backward

For `full` this is the DESIGN's 6N + 12 L d T. A PEFT arm still pays the ~4N of the
frozen base's forward and activation backward, and all of the attention term, so its FLOP
ceiling over `full` is about 1.3x at seq 2048 on Qwen2.5-0.5B/1.5B shapes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from profiling import metrics as pm
from profiling.window import WindowMeter, WindowResult
from runners import distributed
from runners.data import sft
from runners.engines import training, xent
from runners.engines.compilation import (
    Compiler,
    compile_pass,
    fall_back,
    interrupted,
    resolve_compile,
)
from runners.errors import BadInput
from runners.families import finetuning_quality as fq
from runners.families import scored, vision_finetune
from runners.families.base import Family, register
from runners.families.finetuning_config import FinetuningConfig
from runners.models import build as model_mod
from runners.protocol import (
    ENERGY_METRICS,
    NO_PEAK_NOTE,
    RANDOM_WEIGHTS_NOTE,
    Event,
    Metric,
    RunResult,
    explain_missing,
)
from runners.system import device as dev
from runners.techniques import peft_methods, scoring

SOURCE = "runner"
DISTINCT_MICRO_BATCHES = 64
"""Distinct micro-batches built per run; longer runs cycle through them (content does not
change what a step costs)."""
ADAPTER_DIR = "adapter"


def train_flops_per_token(*, total_params: int, trainable_params: int,
                          block_params: Sequence[int], first_block: int, d_attn: int,
                          context_len: int, untied_embedding_params: int = 0) -> float:
    """Model FLOPs of one trained token (the module docstring's formula).

    Args:
        block_params: parameters of each decoder block, bottom first (adapters included).
        first_block: the lowest block the backward pass reaches (`len(block_params)` when
            only the head trains).
        untied_embedding_params: the input embedding's parameters when it is not the output
            layer; they leave the backward path once it stops above the embedding.
    """
    n_layers = len(block_params)
    below = sum(block_params[:first_block])
    if first_block > 0:
        below += untied_embedding_params
    path = total_params - below
    attn = d_attn * context_len
    return (2.0 * total_params + 2.0 * path + 2.0 * trainable_params
            + 4.0 * n_layers * attn + 8.0 * (n_layers - first_block) * attn)


@register
class FinetuningFamily(Family[FinetuningConfig]):
    """Cost and quality of one model x fine-tuning technique."""

    name = "finetuning"
    config_type = FinetuningConfig
    techniques = frozenset(peft_methods.METHODS)

    _data: sft.Dataset | None = None
    _facts: dict[str, Any]
    _compiler: Compiler | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._facts = {}

    def validate(self) -> None:
        super().validate()  # positions, freeze_k, seq_len: runners.params.pair_problem
        c = self.config
        _loss_kernel(c)
        if self.card.vision is not None:  # a VLM: runners.families.vision_finetune
            return vision_finetune.check(self)
        self._data = sft.load(c.dataset, c.heldout_fraction)  # bad data fails before the lock

    # -- the run --------------------------------------------------------------------------

    def run(self) -> RunResult:
        c, ctx = self.config, self.ctx
        if self.card.vision is not None:
            return vision_finetune.run(self, ParamCount, train_flops_per_token)
        method = peft_methods.method(c.technique)
        ctx.phase("load", model=c.model, technique=c.technique)
        threads = dev.set_threads(c.threads)
        precision = training.resolve_precision(c.precision, c.device)
        data = self._data if self._data is not None else sft.load(c.dataset, c.heldout_fraction)

        torch.manual_seed(c.seed)
        base_dtype = self._base_dtype(method, precision)
        built = model_mod.load(self.card, base_dtype, c.device, c.seed, home=ctx.home,
                               on_phase=ctx.phase)
        # After `load`: converting a packaged GGUF writes its tokenizer too.
        tokenizer = model_mod.tokenizer_for(self.card, ctx.home)
        train_batches, eval_batches, data_facts = self._batches(data, tokenizer)
        facts = self._facts
        facts.update(weights=built.weights, base_dtype=built.dtype, precision=precision,
                     base_params=built.size.total_params, attn_impl=built.attn_impl,
                     weights_source=getattr(built, "source", None),
                     tokenizer=getattr(tokenizer, "name", type(tokenizer).__name__))
        meter = dev.window_meter(c.device, dev.sync_fn(c.device), ctx.sample_device)
        tasks = scoring.task_names(c.quality)
        base_scores = fq.base_quality(ctx, self.card.id, built, tokenizer, tasks,
                                      items=c.quality_items, device=c.device, meter=meter)
        if method.quantized_base:
            facts["quantization"] = peft_methods.quantize_base(built.model, c.device,
                                                               ctx.phase)
        # bf16 for full and freeze: trained weights stay bf16 in the model (no autocast
        # casts) with fp32 master copies in the optimizer; for peft: fp32 adapters under
        # bf16 autocast, peft's own scheme.
        use_master = precision == "bf16" and method.kind in ("full", "freeze")
        amp = precision == "bf16" and not use_master
        prepared = peft_methods.prepare(c.technique, built.model, c.hyper(),
                                        adapter_dtype_fp32=amp or precision == "fp32")
        lm = prepared.lm
        if c.score_of:
            return fq.score_only(ctx, prepared, built, tokenizer, tasks, base_scores,
                                 trained=ctx.home / "runs" / c.score_of / ADAPTER_DIR,
                                 items=c.quality_items, device=c.device, amp=amp, meter=meter)
        lm.config.use_cache = False
        if c.grad_ckpt:
            # transformers 5.x renamed the switch; older 5.x releases have only the old name.
            kwargs = {"use_reentrant": False}
            if hasattr(lm, "activation_checkpointing_enable"):
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        compiler = Compiler(resolve_compile(c.compile, c.device, c.technique), lm,
                            requested=c.compile)
        self._compiler = compiler
        prepared.model.train()
        distributed.shard(prepared.model, distributed.current())  # fsdp2: before the optimizer
        trainable = prepared.trainable()
        if not trainable:
            raise BadInput(f"{c.technique} left no trainable parameter "
                           f"(target_modules={c.target_modules!r})")
        n_trainable = sum(p.numel() for p in trainable)
        n_total = sum(p.numel() for p in prepared.model.parameters())
        lr = c.lr if c.lr is not None else method.default_lr
        facts.update(trainable_params=n_trainable, total_params=n_total, lr=lr,
                     adapter_config=prepared.adapter_config, autocast=amp,
                     master_weights=use_master)

        master = training.MasterWeights(trainable) if use_master else None
        optimizer = prepared.make_optimizer(lr, c.weight_decay, c.device,
                                            params=master.params if master else None)
        total_steps = c.warmup + c.steps
        scheduler = training.cosine_schedule(
            optimizer, total_steps=total_steps,
            warmup_steps=math.floor(c.lr_warmup_ratio * total_steps), min_ratio=c.min_lr_ratio)
        peak_tflops, peak_source = self._peak(c)
        flops_per_token = self._flops_per_token(prepared, n_total, n_trainable)
        facts.update(peak_tflops=peak_tflops, peak_tflops_source=peak_source,
                     flops_per_token=flops_per_token)

        chunk = c.loss_chunk_rows
        loss_kernel = _loss_kernel(c)
        loss_ctx = (contextlib.nullcontext() if chunk == 0
                    else xent.chunked_lm_loss(lm, chunk_rows=chunk,
                                              options=xent.LossOptions(kernel=loss_kernel)))
        with loss_ctx as tap:
            step = training.TrainStep(prepared.model, optimizer, device=c.device, amp=amp,
                                      scheduler=scheduler, max_grad_norm=c.max_grad_norm,
                                      after_backward=prepared.after_backward,
                                      params=master.params if master else trainable,
                                      tap=tap, master=master)
            if compiler.active:
                compile_pass(compiler, prepared.model, train_batches[0], amp,
                             device=c.device, ctx=ctx)
            self._steps("warmup", 0, c.warmup, train_batches, step, meter)
            compiler.mark("warmup")
            dev.reset_peak_memory(c.device)
            stats, window = self._steps("measure", c.warmup, c.steps, train_batches, step, meter)
            compiler.mark("measure")
            assert window is not None  # steps >= 1 (RunSpec checks it)
            peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)
            eval_loss = None
            if c.eval_batches and eval_batches:
                ctx.phase("eval", batches=len(eval_batches))
                eval_model = prepared.model if fq.prompt_learning(prepared) else lm
                with compiler.eager():
                    eval_loss = training.evaluate_loss(eval_model, eval_batches,
                                                       device=c.device, amp=amp)

        task_scores: tuple[scoring.TaskScore, ...] = ()
        if tasks and built.weights != "random":
            # The adapted model as trained, after the measured window, in a window of its own.
            with compiler.eager():
                task_scores = fq.score_adapted(ctx, prepared, tokenizer, tasks,
                                               items=c.quality_items, device=c.device,
                                               amp=amp, meter=meter)
        saved: list[str] = []
        if c.save and distributed.saves():
            ctx.phase("save", path=str(ctx.run_dir / ADAPTER_DIR))
            saved = peft_methods.save(prepared, ctx.run_dir / ADAPTER_DIR)

        metrics = self._metrics(stats, window, ParamCount(built.size.total_params, n_total,
                                                          n_trainable),
                                peak_alloc, peak_reserved, eval_loss, flops_per_token,
                                peak_tflops, random_weights=built.weights == "random")
        if tasks:
            metrics += scored.adapted_metrics(tasks, task_scores, base_scores,
                                              random_weights=built.weights == "random")
        info = {
            **facts, **data_facts, "device": c.device, "batch_size": c.batch_size,
            "seq_len": c.seq_len, "grad_accum": c.grad_accum,
            "samples_per_step": c.batch_size * c.grad_accum, "arch": self.card.arch,
            "threads": threads, "grad_ckpt": c.grad_ckpt, **compiler.facts(),
            "loss_chunk_rows": chunk, "loss_kernel": loss_kernel, "packing": c.packing,
            "optimizer": type(optimizer).__name__,
            "optimizer_fused": bool(optimizer.defaults.get("fused")),
            "param_group_lrs": sorted({g["initial_lr"] for g in optimizer.param_groups
                                       if g["params"]}),
            "schedule": "cosine", "hyper": peft_methods.hyper_dict(c.hyper()),
            "measure_s": window.elapsed_s, "measured_steps": len(stats),
            "energy_note": window.energy_note, "adapter_files": saved,
            "adapter_dir": ADAPTER_DIR if saved else None,
            "flops_formula": "2N + 2N_path + 2N_trainable + 4*L*d*T + 8*L_path*d*T",
            **fq.info_of(task_scores, base_scores),
        }
        return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)

    # -- pieces of run -------------------------------------------------------------------------

    def _base_dtype(self, method: peft_methods.Method, precision: str) -> torch.dtype:
        """fp32 for fp32 runs, bf16 otherwise (trained fp32 copies live outside the model,
        or are peft's fp32 adapters)."""
        return torch.float32 if precision == "fp32" else torch.bfloat16

    def _batches(self, data: sft.Dataset, tokenizer: Any
                 ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]],
                            dict[str, Any]]:
        c = self.config
        encode = sft.encoder_for(tokenizer)
        eos = tokenizer.eos_token_id
        pad = next((p for p in (self.card.pad_token_id, tokenizer.pad_token_id, eos)
                    if p is not None), 0)
        train_items = [sft.tokenize(e, encode, eos) for e in data.train]
        held_items = [sft.tokenize(e, encode, eos) for e in data.heldout]
        rows_fn = sft.packed_rows if c.packing else sft.padded_rows
        micro = min((c.warmup + c.steps) * c.grad_accum, DISTINCT_MICRO_BATCHES)
        train_rows = rows_fn(train_items, c.seq_len, micro * c.batch_size,
                             distributed.data_seed(c.seed))
        if not train_rows:
            raise BadInput(f"dataset {data.source!r} has no training tokens")
        train = [self._tensors(b) for b in sft.batches(train_rows, c.batch_size, pad,
                                                       packed=c.packing)]
        held_rows: list[tuple[list[int], list[int]]] = []
        if c.eval_batches:
            # Held-out rows in order, each once (no wrap), the first eval_batches of them.
            every = rows_fn(held_items, c.seq_len, len(held_items) + sum(
                len(t.ids) for t in held_items) // c.seq_len + 1, c.seed, wrap=False)
            held_rows = every[:c.eval_batches * c.batch_size]
        held = [self._tensors(b) for b in sft.batches(held_rows, c.batch_size, pad,
                                                      packed=c.packing)]
        facts = {"dataset": data.source, "train_examples": len(data.train),
                 "heldout_examples": len(data.heldout),
                 "train_tokens": sum(len(t.ids) for t in train_items),
                 "heldout_tokens": sum(len(t.ids) for t in held_items)}
        return train, held, facts

    def _tensors(self, batch: sft.Batch) -> dict[str, torch.Tensor]:
        device = self.config.device
        out = {"input_ids": torch.tensor(batch.input_ids, dtype=torch.long, device=device),
               "labels": torch.tensor(batch.labels, dtype=torch.long, device=device)}
        if batch.attention_mask is not None:
            out["attention_mask"] = torch.tensor(batch.attention_mask, dtype=torch.long,
                                                 device=device)
        return out

    def _peak(self, c: FinetuningConfig) -> tuple[float | None, str | None]:
        if c.peak_tflops is not None:
            return c.peak_tflops, "given"
        if c.device.startswith("cuda"):
            measured = training.matmul_peak_tflops(c.device)
            return measured, "measured bf16 8192^3 matmul" if measured else None
        return None, None

    def _flops_per_token(self, prepared: peft_methods.Prepared, n_total: int,
                         n_trainable: int) -> float:
        c, card = self.config, self.card
        blocks = peft_methods.decoder_blocks(prepared.lm)
        block_params = [sum(p.numel() for p in b.parameters()) for b in blocks]
        first = peft_methods.first_trained_block(prepared.model, len(blocks))
        untied = 0 if card.tie_embeddings else card.vocab_size * card.hidden_size
        extra = c.virtual_tokens if c.technique == "prompt-tuning" else 0
        self._facts["first_trained_block"] = first
        return train_flops_per_token(
            total_params=n_total, trainable_params=n_trainable, block_params=block_params,
            first_block=first, d_attn=card.num_heads * card.head_dim,
            context_len=c.seq_len + extra, untied_embedding_params=untied)

    def _steps(self, phase: str, first_step: int, count: int,
               batches: Sequence[dict[str, torch.Tensor]], step: training.TrainStep,
               meter: WindowMeter) -> tuple[list[training.StepStats], WindowResult | None]:
        """Run `count` optimizer steps inside window `phase`, one step event each."""
        c, ctx = self.config, self.ctx
        ctx.phase(phase, steps=count)
        if count == 0:
            return [], None
        out: list[training.StepStats] = []
        meter.begin(phase)
        for i in range(count):
            k = (first_step + i) * c.grad_accum
            micro = [batches[(k + j) % len(batches)] for j in range(c.grad_accum)]
            compiler = self._compiler
            try:
                stats = step(micro)
            except Exception as e:
                # A recompile that fails: no optimizer step happened; redo the step eagerly.
                if compiler is None or not compiler.active or interrupted(e):
                    raise
                fall_back(compiler, e, phase, step.model, device=c.device, ctx=ctx)
                if phase == "measure":
                    out = self._restart_window(phase, i, count, meter, out)
                stats = step(micro)
            out.append(stats)
            ctx.emit(Event.step(step=i, phase=phase, latency_s=stats.latency_s,
                                tokens=stats.tokens, samples=stats.samples,
                                loss=stats.loss if math.isfinite(stats.loss) else None,
                                lr=stats.lr, target_tokens=stats.target_tokens,
                                objective=_finite(stats.objective),
                                grad_norm=_finite(stats.grad_norm)))
        window = meter.end(phase)
        ctx.emit(Event.window(**window.to_dict()))
        return out, window

    def _restart_window(self, phase: str, at_step: int, count: int, meter: WindowMeter,
                        discarded: Sequence[training.StepStats]) -> list[training.StepStats]:
        """Close the measured window after a compile fallback inside it and open it again.

        The window so far holds compiled steps and the failed compile; what follows runs
        eagerly, and one mean over both would describe neither. The steps before `at_step`
        stay trained (the schedule goes on) but are not measured: the new window measures
        the remaining steps, all eager, and the run's info says so.
        """
        ctx = self.ctx
        old = meter.end(phase)
        ctx.emit(Event.window(**{**old.to_dict(), "name": f"{phase}_discarded"}))
        note = (f"torch.compile fell back to eager at measured step {at_step}: the measured "
                f"window restarted there; {len(discarded)} compiled steps discarded, "
                f"{count - at_step} eager steps measured")
        ctx.emit(Event.log(note, level="warning", phase=phase))
        self._facts["measure_restarted"] = {"at_step": at_step, "discarded": len(discarded),
                                            "measured": count - at_step, "note": note}
        ctx.phase(phase, steps=count - at_step, restarted_at=at_step)
        meter.begin(phase)
        return []

    def _metrics(self, stats: Sequence[training.StepStats], window: WindowResult,
                 params: ParamCount, peak_alloc: float | None, peak_reserved: float | None,
                 eval_loss: float | None, flops_per_token: float, peak_tflops: float | None,
                 *, random_weights: bool) -> list[Metric]:
        lat = pm.latency_stats([s.latency_s for s in stats])
        seconds = window.elapsed_s
        tokens = sum(s.tokens for s in stats)
        samples = sum(s.samples for s in stats)
        tokens_per_s = pm.it_tokens_per_s(tokens, seconds)
        energy = window.energy_j
        energy_source = window.energy_source or SOURCE
        flops_per_s = None if tokens_per_s is None else tokens_per_s * flops_per_token
        peak = peak_tflops * 1e12 if peak_tflops else None
        final_loss = stats[-1].loss if stats else None
        eval_ppl = math.exp(eval_loss) if eval_loss is not None and eval_loss < 700 else None
        notes = {name: window.energy_note for name in ENERGY_METRICS}
        if random_weights:
            # A fine-tune of random weights has no quality to keep: its held-out perplexity
            # is noise around the vocabulary size, whatever the method.
            eval_ppl = None
            notes["eval_ppl"] = RANDOM_WEIGHTS_NOTE
        elif self.config.eval_batches == 0:
            notes["eval_ppl"] = notes["eval_loss"] = "not scored: eval_batches=0"
        if peak is None:
            notes["mfu"] = NO_PEAK_NOTE

        def m(name: str, value: float | None, unit: str, source: str = SOURCE) -> Metric:
            return Metric(name, _finite(value), unit, source)

        # ST and TT count the base model's parameters (DESIGN.md section 6): the adapters
        # are what a method adds, not the size of the model being tuned.
        return list(explain_missing([
            m("st", pm.st(samples, params.base, seconds), "samples/param/s"),
            m("tt", pm.tt(tokens, params.base, seconds), "tokens/param/s"),
            m("tokens_per_s", tokens_per_s, "tokens/s"),
            m("samples_per_s", pm.it_tokens_per_s(samples, seconds), "samples/s"),
            m("al_s", lat["mean"], "s"),
            m("al_p50_s", lat["p50"], "s"),
            m("al_p90_s", lat["p90"], "s"),
            m("al_p99_s", lat["p99"], "s"),
            m("trainable_params", float(params.trainable), "params"),
            m("total_params", float(params.base), "params"),
            m("adapted_params", float(params.adapted), "params"),
            m("loss", final_loss, "nats/token"),
            m("eval_loss", eval_loss, "nats/token"),
            m("eval_ppl", eval_ppl, "ppl"),
            m("peak_allocated_gib", peak_alloc, "GiB"),
            m("peak_reserved_gib", peak_reserved, "GiB"),
            m("energy_j", energy, "J", energy_source),
            m("aec_w", pm.aec_w(energy, window.t0_ns, window.t1_ns), "W", energy_source),
            m("j_per_token", pm.j_per_token(energy, tokens), "J/token", energy_source),
            m("mfu", pm.mfu(flops_per_s, peak), "fraction"),
        ], notes))

    def failure_info(self) -> Mapping[str, Any]:
        c = self.config
        info = {"batch_size": c.batch_size, "seq_len": c.seq_len, "grad_accum": c.grad_accum,
                "device": c.device, "technique": c.technique, "grad_ckpt": c.grad_ckpt}
        if self._compiler is not None:
            info.update(self._compiler.facts())
        info.update({k: v for k, v in self._facts.items()
                     if k in ("precision", "base_dtype", "trainable_params", "total_params",
                              "base_params", "weights")})
        return info


@dataclass(frozen=True, slots=True)
class ParamCount:
    """The parameter counts of a fine-tuning run."""

    base: int
    """The base model's parameters: the size ST and TT divide by."""
    adapted: int
    """The model with the method's adapters (or prompt embeddings) added."""
    trainable: int
    """Parameters the optimizer updates."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _loss_kernel(c: FinetuningConfig) -> str:
    """`loss_kernel` resolved for this run (`torch` under loss_chunk_rows=0, the model's own
    loss); BadInput where the one asked for cannot run."""
    if c.loss_chunk_rows == 0:
        if c.loss_kernel == "liger":
            raise BadInput("loss_kernel=liger replaces the chunked loss; loss_chunk_rows=0 "
                           "runs the model's own (leave loss_chunk_rows unset)")
        return "torch"
    try:
        return xent.resolve_loss_kernel(c.loss_kernel, c.device)
    except ValueError as e:
        raise BadInput(str(e)) from None
