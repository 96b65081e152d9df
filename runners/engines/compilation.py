"""torch.compile orchestration of the training families (finetuning and pretraining).

Both compile in a `compile` phase before the warm-up window (one forward and backward whose
gradients are discarded), count the graphs dynamo compiles, run evaluation with compiled
modules forced eager, and go on eager when the compiler fails. What they share is here once:
dynamo's graph counters (`dynamo_stats`, `graph_count`), the eager stance (`eager_if`) and
telling an interruption from a compiler failure (`interrupted`).

Each family's own orchestration is here too, kept apart because it differs (what compiles,
how the fallback undoes it, the result-info keys and the events):

- finetuning (a transformers model): `resolve_compile`, `Compiler` (every decoder block, the
  regional compile, or the whole stack; dynamo's recompile limit; the fallback to eager),
  `compile_pass` and `fall_back`.
- pretraining (`runners.models.decoder.Decoder`): `compile_decoder` (its blocks and its loss chunk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from runners.engines import training
from runners.protocol import Event
from runners.system import device as dev
from runners.techniques import peft_methods

if TYPE_CHECKING:
    from runners.families.base import RunContext

# -- shared ------------------------------------------------------------------------------------


def dynamo_stats() -> tuple[int, int]:
    """(graphs compiled so far, graph breaks so far) in this process, from dynamo's counters."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return 0, 0
    return (int(counters["stats"].get("unique_graphs", 0)),
            int(sum(counters["graph_break"].values())))


def graph_count() -> int:
    """Graphs dynamo has compiled in this process."""
    return dynamo_stats()[0]


def eager_if(on: bool) -> contextlib.AbstractContextManager[Any]:
    """Compiled functions run eagerly inside (torch.compiler.set_stance, torch 2.6+)."""
    stance = getattr(torch.compiler, "set_stance", None)
    if not on or stance is None:
        return contextlib.nullcontext()
    return stance("force_eager")


def interrupted(exc: BaseException) -> bool:
    """`exc` is, or wraps, a time limit running out (inductor wraps what interrupts it in
    its own error): that must end the run, not send it to eager."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (TimeoutError, KeyboardInterrupt)):
            return True
        seen.add(id(current))
        inner = getattr(current, "inner_exception", None)  # dynamo's BackendCompilerFailed
        current = (inner if isinstance(inner, BaseException)
                   else current.__cause__ or current.__context__)
    return False


# -- finetuning --------------------------------------------------------------------------------

COMPILE_MODES = ("auto", "off", "layers", "model")
COMPILE_ALIASES = {"true": "layers", "on": "layers", "yes": "layers", "1": "layers",
                   "false": "off", "no": "off", "0": "off", "none": "off"}
COMPILE_AUTO = frozenset({"full", "lora", "lora-plus", "rslora", "pissa", "olora"})
"""Techniques `compile=auto` compiles on CUDA. `full` and `lora` were measured compiled
(docs/benchmarks.md, Fine-tuning; one H200, 2026-11-27): 1.27x and 1.41x the eager tokens/s
on the Qwen2.5-1.5B shape, full 1.37x on 0.5B, the same loss curve, less memory, 2-11 s of
compilation, nothing recompiled after the compile phase. lora-plus, rslora, pissa and olora
run peft's very same LoRA layer (they differ in the optimizer, the scale or the
initialisation). The others were not measured compiled, so they stay eager."""
RECOMPILE_LIMIT = 32
"""Dynamo's per-code cache limit while a run compiles (default 8): every compiled block
shares nn.Module's call code, so variants (freeze's trained and frozen blocks, an input
that turns dynamic) must never push blocks silently back to eager."""


def resolve_compile(requested: str, device: str, technique: str) -> str:
    """The compile mode a run uses: `requested` unless it is `auto`, which is `layers` on
    CUDA for the techniques of COMPILE_AUTO and `off` otherwise (on CPU the compile time,
    minutes for a small model, outweighs what a short run gains)."""
    if requested != "auto":
        return requested
    return "layers" if device.startswith("cuda") and technique in COMPILE_AUTO else "off"


class Compiler:
    """torch.compile of a causal LM's decoder, and its fallback to eager.

    `layers` compiles every decoder block (`nn.Module.compile`); the blocks run the same code
    with parameters as graph inputs, so dynamo compiles one graph and every block reuses it.
    `model` compiles the decoder stack (`lm.model`) as a whole. Nothing compiles until the
    first call; `fallback` undoes the compilation, after which everything runs eagerly.
    """

    def __init__(self, mode: str, lm: Any, requested: str | None = None) -> None:
        self.requested = requested or mode
        self.mode = mode
        self.modules: list[torch.nn.Module] = []
        self.error: str | None = None
        self.fallback_phase: str | None = None
        self.compile_s: float | None = None
        self.graphs: dict[str, int] = {}
        if mode == "off":
            return
        import torch._dynamo

        torch._dynamo.reset()  # graphs of an earlier model in this process are useless here
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
                break
        self.modules = (list(peft_methods.decoder_blocks(lm)) if mode == "layers"
                        else [lm.model])
        for module in self.modules:
            module.compile()
        self._last = graph_count()

    @property
    def active(self) -> bool:
        return bool(self.modules)

    def mark(self, name: str) -> None:
        """Record how many graphs dynamo compiled since the previous mark, as `name`."""
        if self.active:
            now = graph_count()
            self.graphs[name] = now - self._last
            self._last = now

    def fallback(self, exc: BaseException, phase: str) -> None:
        """Undo the compilation after `exc` (raised in `phase`); later calls run eagerly."""
        import torch._dynamo

        from runners.errors import one_line

        for module in self.modules:
            module._compiled_call_impl = None
        self.modules = []
        torch._dynamo.reset()
        self.error = one_line(exc)
        self.fallback_phase = phase
        self.mode = "off"

    def eager(self) -> contextlib.AbstractContextManager[Any]:
        """Within the block compiled modules run eagerly (evaluation: no grad-free
        recompile)."""
        return eager_if(self.active)

    def facts(self) -> dict[str, Any]:
        return {"compile": self.mode, "compile_requested": self.requested,
                "compile_s": self.compile_s, "compile_graphs": dict(self.graphs) or None,
                "compile_error": self.error, "compile_fallback_phase": self.fallback_phase}


def compile_pass(compiler: Compiler, model: Any, batch: dict[str, torch.Tensor], amp: bool,
                 *, device: str, ctx: RunContext) -> None:
    """Compile before the warm-up: one forward and backward through the compiled model,
    its gradients discarded (no optimizer step, so nothing trains). A failure falls back
    to eager."""
    ctx.phase("compile", mode=compiler.mode, modules=len(compiler.modules))
    t0 = time.perf_counter()
    try:
        n = max(1, training.count_tokens(batch)[1])
        with training.autocast(device, amp):
            loss = training.hf_loss(model, batch, n)
        loss.backward()
        del loss
    except Exception as e:  # noqa: BLE001 - any compiler failure means eager
        if interrupted(e):
            raise
        fall_back(compiler, e, "compile", model, device=device, ctx=ctx)
    finally:
        for p in model.parameters():
            p.grad = None
        sync = dev.sync_fn(device)
        if sync is not None:
            sync()
    compiler.compile_s = time.perf_counter() - t0
    compiler.mark("compile")


def fall_back(compiler: Compiler, exc: BaseException, phase: str, model: Any, *,
              device: str, ctx: RunContext) -> None:
    """`compiler.fallback`, the model's gradients dropped, and a warning event."""
    compiler.fallback(exc, phase)
    for p in model.parameters():
        p.grad = None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    ctx.emit(Event.log(f"torch.compile failed in {phase}; running eager: "
                       f"{compiler.error}", level="warning", phase=phase))


# -- pretraining -------------------------------------------------------------------------------


def compile_decoder(model: Any, wanted: bool, rows: torch.Tensor, *, requested: str,
                    chunk_rows: int | None,
                    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
                    sync: Callable[[], None] | None, ctx: RunContext) -> dict[str, Any]:
    """Compile the decoder's blocks and its loss chunk, then run one forward and backward
    on the first batch (no optimizer step: the weights stay as they were) so every graph
    is compiled before the warm-up window opens. A failure other than running out of
    memory goes back to eager, its reason kept. Returns the `compile` info."""
    info: dict[str, Any] = {"requested": requested, "enabled": False}
    if not wanted:
        if requested == "true":
            info["reason"] = "only the decoder variants compile (transformers baselines " \
                             "run eager)"
        return info
    ctx.phase("compile")
    t0 = time.perf_counter()
    graphs0, breaks0 = dynamo_stats()
    try:
        info["what"] = model.compile_blocks() + "; loss chunk (softmax, loss, gradient)"
        with autocast():
            out = model.forward_loss(rows[:, :-1], rows[:, 1:], chunk_rows=chunk_rows)
        out.loss.backward()
        if sync is not None:
            sync()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any compiler failure: run eager instead
        reason = f"{type(e).__name__}: {e}"[:500]
        model.uncompile_blocks()
        model.loss_options = dataclasses.replace(model.loss_options, compiled=False)
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        info.update(enabled=False, fallback=reason)
        ctx.emit(Event.log(f"torch.compile failed, running eager: {reason}"))
        return info
    finally:
        model.zero_grad(set_to_none=True)
    graphs1, breaks1 = dynamo_stats()
    info.update(enabled=True, backend="inductor", compile_s=time.perf_counter() - t0,
                graphs=graphs1 - graphs0, graph_breaks=breaks1 - breaks0)
    ctx.emit(Event.log(f"compiled in {info['compile_s']:.1f} s: {info['graphs']} graphs, "
                       f"{info['graph_breaks']} graph breaks"))
    return info
