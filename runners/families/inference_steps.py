"""The measured part of an inference run: which decode engine runs it (prepared outside any
window, with the fallbacks `engine=auto` takes and why), the requests of a window, and the
prefill-only window; shared by text decode and the vision tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from profiling import metrics as pm
from profiling.window import WindowMeter, WindowResult
from runners.engines.decode import ENGINES, CompileEngine, Engine, FusedEngine, default_chain
from runners.errors import Unsupported
from runners.models import build as model_mod
from runners.protocol import Event
from runners.system import device as dev
from runners.techniques import quant_backends

COMPILED_QUANTIZED = "fused+compile"
"""Engine-chain entry of `engine=auto` for weights on a backend in
quant_backends.STEP_COMPILES: `fused` with the step compiled around the quantized kernels,
tried before the uncompiled `fused`."""


def step_compiles(fam: Any) -> bool:
    """Whether `fused` compiles the decode step around this run's quantized kernels."""
    backend = (fam._quant_report or {}).get("backend")  # noqa: SLF001
    return (fam.config.device.startswith("cuda") and fam.config.compile_mode != "none"
            and backend in quant_backends.STEP_COMPILES)


def keep_tuning(fam: Any) -> None:
    """After the warm-up every kernel shape of the run is tuned: keep the quantized
    backend's choices in the home for the next run (gemlite's; a no-op otherwise)."""
    report = fam._quant_report  # noqa: SLF001
    if report:
        quant_backends.save_tuning(str(report.get("backend")), fam.ctx.home, fam.config.device)


def prepared_engine(fam: Any, built: model_mod.BuiltModel, sync: Any, pad: int | None,
                    first: torch.Tensor) -> tuple[Engine, str | None]:
    """The decode engine, prepared (cache allocated, graph captured, step compiled) outside
    any window, and why the engines before it were passed over (None: none was).

    A requested engine that cannot prepare fails the run (`unsupported`). With `engine=auto`
    the device's engines are tried in order (CUDA: fused, graph, loop; the compiled
    quantized step first where its backend traces) and the run's info says why each one
    passed over did not prepare.
    """
    c, ctx = fam.config, fam.ctx
    names = default_chain(c.device) if c.engine == "auto" else (c.engine,)
    if step_compiles(fam) and names[0] == FusedEngine.name:
        # the compiled quantized step first; the same lean step uncompiled if it fails
        names = (COMPILED_QUANTIZED, *names)
    reasons: list[str] = []
    for i, name in enumerate(names):
        engine = make_engine(fam, name, built, sync, pad)
        ctx.phase("prepare", engine=engine.name)
        try:
            engine.prepare(first)
        except Unsupported as e:
            if i == len(names) - 1:
                raise
            reason = f"engine {name} unavailable, fell back to {names[i + 1]}: {e}"
            ctx.emit(Event.log(reason))
            reasons.append(reason)
            continue
        return engine, "; ".join(reasons) or None
    raise AssertionError("unreachable: the last engine raises")


def make_engine(fam: Any, name: str, built: model_mod.BuiltModel, sync: Any,
                pad: int | None) -> Engine:
    """Engine `name` (or COMPILED_QUANTIZED) over the built model, not yet prepared."""
    c = fam.config
    if name == COMPILED_QUANTIZED:
        return FusedEngine(built.model, c.new_tokens, sync, pad, mode=c.compile_mode,
                           compile_quantized=True)
    if name in (CompileEngine.name, FusedEngine.name):
        cls = CompileEngine if name == CompileEngine.name else FusedEngine
        return cls(built.model, c.new_tokens, sync, pad, mode=c.compile_mode)
    return ENGINES[name](built.model, c.new_tokens, sync, pad)


def run_requests(fam: Any, phase: str, batches: Sequence[Any], engine: Any,
                 meter: WindowMeter, prompt_tokens: int | None = None,
                 extra: Callable[[Any], dict[str, Any]] | None = None,
                 ) -> tuple[list[Any], WindowResult | None]:
    """Run `batches` as requests inside window `phase`, one step event each (with the fields
    `extra` reads from a request's timing; prompts of `prompt_tokens`, default seq_len)."""
    c, ctx = fam.config, fam.ctx
    ctx.phase(phase, steps=len(batches))
    if not batches:
        return [], None
    timings: list[Any] = []
    prompt = c.seq_len if prompt_tokens is None else prompt_tokens
    meter.begin(phase)
    for i, inputs in enumerate(batches):
        timing, _ = engine(inputs)
        timings.append(timing)
        ctx.emit(Event.step(step=i, phase=phase, latency_s=timing.latency_s,
                            tokens=c.batch_size * c.new_tokens, samples=c.batch_size,
                            ttft_s=timing.ttft_s, prompt_tokens=c.batch_size * prompt,
                            tpot_s=pm.tpot_s(timing.latency_s, timing.ttft_s, c.new_tokens),
                            **(extra(timing) if extra else {})))
    window = meter.end(phase)
    ctx.emit(Event.window(**window.to_dict()))
    return timings, window


def prefill_window(fam: Any, batches: Sequence[Any], engine: Any, meter: WindowMeter,
                   prompt_tokens: int | None = None) -> WindowResult:
    """The measured requests' prefills alone, in window `prefill` (energy by phase); prompts
    of `prompt_tokens` (default seq_len; the vision tasks' include the image)."""
    c, ctx = fam.config, fam.ctx
    ctx.phase("prefill", steps=len(batches))
    sync = dev.sync_fn(c.device) or (lambda: None)
    meter.begin("prefill")
    prompt = c.seq_len if prompt_tokens is None else prompt_tokens
    for i, inputs in enumerate(batches):
        t0 = time.perf_counter_ns()
        engine.prefill(inputs)
        sync()
        latency = (time.perf_counter_ns() - t0) / 1e9
        ctx.emit(Event.step(step=i, phase="prefill", latency_s=latency, tokens=0,
                            samples=c.batch_size, prompt_tokens=c.batch_size * prompt))
    window = meter.end("prefill")
    ctx.emit(Event.window(**window.to_dict()))
    return window
