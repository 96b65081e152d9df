"""Decode engines: how one inference request (prefill, then forced-length greedy decode)
is executed and timed.

- `eager`: `model.generate()`, the library baseline that shows what its generic machinery
  costs per token.
- `loop`: the runner's own loop over a DynamicCache, so the measured path holds nothing but
  forward passes and an argmax (the CPU default).
- `static`: the own loop over a preallocated StaticCache, every decode step on fixed
  buffers (the shape a CUDA graph needs; selectable to see what the graph itself buys).
- `graph`: `static` with one decode step captured in a CUDA graph after a warm-up and
  replayed per token; prefill stays eager (the CUDA default). On an H100 at batch 1,
  `generate()` spends about 95% of a small model's decode time launching kernels; a graph
  replays the whole step with one launch.
- `compile`: `graph` over a decode step compiled by torch.compile (inductor fuses the
  norms, rotary embedding and activations into few kernels) and captured by this module,
  not by inductor's own cudagraph trees: `generate()` + static cache + `reduce-overhead`
  segfaulted on the H100 image (torch 2.11, transformers 5.17), see DESIGN.md section 9.

Every engine produces the same tokens (greedy, EOS ignored) up to floating-point
reassociation, so runs of different engines do the same work. Engines run under
`torch.no_grad()`, not inference mode: quanto's packed int4 weights fail under inference
mode ("Cannot set version_counter for inference tensor", optimum-quanto 0.2.7).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from runners.errors import Unsupported, is_oom, one_line


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """Timing of one request (a batch of prompts decoded together)."""

    latency_s: float
    """Request start to last token, device-synchronised."""
    ttft_s: float
    """Request start to the first generated token (prefill + one argmax)."""


class Engine:
    """Runs one request: `input_ids` [batch, seq_len] -> (timing, generated ids [batch, n])."""

    name = ""
    kv_cache = "dynamic"
    cuda_graph = False
    compiled = False

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None) -> None:
        self.model = model
        self.new_tokens = new_tokens
        self._sync = sync or _nothing
        self.pad_token_id = pad_token_id
        self._kw = cache_kwarg(model)

    def prepare(self, input_ids: torch.Tensor) -> None:
        """Get ready for requests shaped like `input_ids` (allocate caches, capture graphs,
        compile) so that none of it lands in a timed request. Safe to call again."""

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Prefill only: the prompt's forward and the first token's argmax (the unit the
        runner's prefill energy window repeats). Returns the first tokens [batch, 1]."""
        with torch.no_grad():
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                             **{self._kw: new_cache(self.model)})
            return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ran, for the run's info."""
        return {"engine": self.name, "kv_cache": self.kv_cache, "cuda_graph": self.cuda_graph,
                "compiled": self.compiled, "prefill": "eager"}


def _nothing() -> None:
    return None


def cache_kwarg(model: Any) -> str:
    """The forward() keyword that takes the KV cache: `cache` in transformers >= 5.2x,
    `past_key_values` before (an unknown keyword would be swallowed by **kwargs, silently
    decoding without a cache, so this is checked, not assumed)."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise RuntimeError(f"{type(model).__name__}.forward takes no KV cache argument")


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 builds its layers lazily, without a config
        return DynamicCache()


class LoopEngine(Engine):
    """Prefill with a DynamicCache, then one forward per token; greedy, EOS ignored."""

    name = "loop"

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        model, sync, kw = self.model, self._sync, self._kw
        with torch.no_grad():
            sync()
            t0 = time.perf_counter_ns()
            cache = new_cache(model)
            out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{kw: cache})
            token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            sync()
            t_first = time.perf_counter_ns()
            tokens = [token]
            for _ in range(self.new_tokens - 1):
                out = model(input_ids=token, use_cache=True, **{kw: cache})
                token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                tokens.append(token)
            sync()
            t1 = time.perf_counter_ns()
        return RequestTiming((t1 - t0) / 1e9, (t_first - t0) / 1e9), torch.cat(tokens, dim=1)


class _FirstTokenClock:
    """A generate() streamer that notes when the first generated token reaches the host.

    generate() hands the prompt to `put` first, then each new token (already copied to the
    host, which waits for the device), so the second `put` marks the first token.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self.calls = 0
        self.first_ns: int | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self._sync()
            self.first_ns = time.perf_counter_ns()

    def end(self) -> None:
        return None


class GenerateEngine(Engine):
    """`model.generate()` with greedy search and exactly `new_tokens` new tokens."""

    name = "eager"

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        from transformers import GenerationConfig

        model, sync = self.model, self._sync
        config = GenerationConfig(max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=self.pad_token_id,
                                  eos_token_id=model.config.eos_token_id)
        clock = _FirstTokenClock(sync)
        mask = torch.ones_like(input_ids)
        with torch.no_grad():
            sync()
            t0 = time.perf_counter_ns()
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 generation_config=config, streamer=clock)
            sync()
            t1 = time.perf_counter_ns()
        generated = out[:, input_ids.shape[1]:]
        if generated.shape[1] != self.new_tokens:
            raise RuntimeError(f"generate() returned {generated.shape[1]} new tokens, "
                               f"expected {self.new_tokens}")
        first = clock.first_ns if clock.first_ns is not None else t1
        return RequestTiming((t1 - t0) / 1e9, (first - t0) / 1e9), generated

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prefill": "generate()", "decode": "generate()"}


class StaticEngine(Engine):
    """The own loop over a StaticCache: every decode step reads and writes fixed buffers.

    The step feeds the last token from `_tok`, writes the argmax back into `_tok` and into
    column `_idx` of `_out`, and advances `_idx` and the cache's own position counter, all
    on the device: nothing in it depends on the host, which is what lets `graph` capture it
    once and replay it for every token.
    """

    name = "static"
    kv_cache = "static"
    WARMUP_STEPS = 3
    """Decode steps run before a capture (cuBLAS handles, workspaces, compilation)."""

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None) -> None:
        super().__init__(model, new_tokens, sync, pad_token_id)
        self._shape: tuple[int, int] | None = None
        self._cache: Any = None
        self._tok = self._out = self._idx = torch.empty(0)

    def prepare(self, input_ids: torch.Tensor) -> None:
        batch, seq_len = input_ids.shape
        if self._shape == (batch, seq_len):
            return
        device = input_ids.device
        with torch.no_grad():
            # One slot per prompt token and per generated token but the last (never fed back).
            self._allocate(batch, seq_len + self.new_tokens, device)
            self._out = torch.zeros((batch, self.new_tokens), dtype=torch.long, device=device)
            self._idx = torch.zeros((1,), dtype=torch.long, device=device)
            self._shape = (batch, seq_len)
            self._setup(input_ids)

    def _allocate(self, batch: int, max_len: int, device: torch.device) -> None:
        """The KV cache and the fed-back token buffer `_tok` for one request shape."""
        from transformers import StaticCache

        self._cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        self._tok = torch.zeros((batch, 1), dtype=torch.long, device=device)

    def _setup(self, input_ids: torch.Tensor) -> None:
        """Subclass hook, run once per request shape with gradients off."""

    def _emit(self, logits: torch.Tensor) -> None:
        token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        self._tok.copy_(token)
        self._out.index_copy_(1, self._idx, token)
        self._idx.add_(1)

    def _prefill(self, input_ids: torch.Tensor) -> None:
        self._cache.reset()  # zeroes in place: the tensors a graph captured stay valid
        self._idx.zero_()
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                         **{self._kw: self._cache})
        self._emit(out.logits)

    def _step(self) -> None:
        out = self.model(input_ids=self._tok, use_cache=True, logits_to_keep=1,
                         **{self._kw: self._cache})
        self._emit(out.logits)

    def _decode(self, steps: int) -> None:
        for _ in range(steps):
            self._step()

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.prepare(input_ids)
        with torch.no_grad():
            self._prefill(input_ids)
        return self._tok

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        self.prepare(input_ids)
        sync = self._sync
        with torch.no_grad():
            sync()
            t0 = time.perf_counter_ns()
            self._prefill(input_ids)
            sync()
            t_first = time.perf_counter_ns()
            self._decode(self.new_tokens - 1)
            sync()
            t1 = time.perf_counter_ns()
            generated = self._out.clone()
        return RequestTiming((t1 - t0) / 1e9, (t_first - t0) / 1e9), generated

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "decode": "own loop, eager step"}


class GraphEngine(StaticEngine):
    """`static` with one decode step captured in a CUDA graph and replayed per token."""

    name = "graph"
    cuda_graph = True

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None) -> None:
        super().__init__(model, new_tokens, sync, pad_token_id)
        self._graph: Any = None
        self.capture_s: float | None = None

    def _step_fn(self) -> Callable[[], None]:
        return self._step

    def _setup(self, input_ids: torch.Tensor) -> None:
        device = input_ids.device
        if device.type != "cuda":
            raise Unsupported(f"engine {self.name!r} captures CUDA graphs and needs a CUDA "
                              f"device (got {device}); use engine=loop or static")
        self._graph = None
        if self.new_tokens < 2:
            return  # nothing to decode after the first token
        step = self._step_fn()
        t0 = time.perf_counter()
        # Warm up on a side stream, as graph capture requires (first-use allocations, cuBLAS
        # workspaces, and for `compile` the compilation itself), then capture one step. The
        # warm-up steps write cache slots seq_len.. which every request's prefill rewrites.
        self._prefill(input_ids)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(min(self.WARMUP_STEPS, self.new_tokens - 1)):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                step()
        except RuntimeError as e:
            if is_oom(e):
                raise  # out of memory is a result of its own, not an unsupported engine
            raise Unsupported(f"engine {self.name!r}: this model's decode step cannot be "
                              f"captured in a CUDA graph: {one_line(e)}") from None
        torch.cuda.synchronize(device)
        self._graph = graph
        self.capture_s = time.perf_counter() - t0

    def _decode(self, steps: int) -> None:
        graph = self._graph
        for _ in range(steps):
            graph.replay()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "decode": "CUDA graph replay of one decode step",
                "cuda_graph": self._graph is not None, "capture_s": self.capture_s}


class CompileEngine(GraphEngine):
    """`graph` over a torch.compile'd decode step (inductor fusion, no inductor cudagraphs).

    On CPU the compiled step runs without a graph.
    """

    name = "compile"
    compiled = True
    modes: tuple[str, ...] = ("default", "max-autotune-no-cudagraphs")
    """torch.compile modes this engine takes (COMPILE_MODES below)."""

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None, mode: str = "default") -> None:
        super().__init__(model, new_tokens, sync, pad_token_id)
        if mode not in self.modes:
            raise ValueError(f"compile mode {mode!r} not in {self.modes}")
        self.mode = mode
        self._compiled: Callable[[], None] | None = None
        self.compile_s: float | None = None

    def _step_fn(self) -> Callable[[], None]:
        if self._compiled is None:
            # Graph breaks are allowed rather than failing the run; the capture around the
            # compiled step is this engine's, so modes with inductor's own cudagraph trees
            # are not offered.
            self._compiled = torch.compile(self._step, mode=self.mode, fullgraph=False,
                                           dynamic=False)
        return self._compiled

    def _setup(self, input_ids: torch.Tensor) -> None:
        t0 = time.perf_counter()
        try:
            if input_ids.device.type == "cuda":
                super()._setup(input_ids)
            else:
                step = self._step_fn()
                self._prefill(input_ids)
                for _ in range(min(self.WARMUP_STEPS, self.new_tokens - 1)):
                    step()
        except Unsupported:
            raise
        except Exception as e:  # noqa: BLE001 - a compiler failure means unsupported here
            if is_oom(e):
                raise
            raise Unsupported(f"engine 'compile': torch.compile failed on this model: "
                              f"{one_line(e)}") from None
        self.compile_s = time.perf_counter() - t0

    def _decode(self, steps: int) -> None:
        if self._graph is not None:
            super()._decode(steps)
            return
        step = self._step_fn()
        for _ in range(steps):
            step()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["decode"] = ("CUDA graph replay of one torch.compile'd decode step"
                         if self._graph is not None else "torch.compile'd decode step")
        out.update(compile_s=self.compile_s, compile_mode=self.mode)
        return out


class FusedEngine(CompileEngine):
    """The lean decoder of runners.engines.fused (fused QKV and gate/up projections, own static
    cache, copy-free GQA decode attention) stepping the same weights; on CUDA its decode
    step is compiled by inductor (float weights; `compile_mode=none` skips it) and captured
    in a CUDA graph. On CPU the lean step runs eagerly.

    Quantized projections are called as their own modules (their kernels are the
    quantization's), still inside the captured graph; the step around them is compiled only
    with `compile_quantized` (backends whose kernels inductor traces:
    runners.techniques.quant_backends.STEP_COMPILES).
    """

    name = "fused"
    modes = (*CompileEngine.modes, "none")

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None, mode: str = "default",
                 compile_quantized: bool = False) -> None:
        super().__init__(model, new_tokens, sync, pad_token_id, mode)
        self._lean: Any = None
        self._compiles = False
        self.compile_quantized = compile_quantized

    def _allocate(self, batch: int, max_len: int, device: torch.device) -> None:
        from runners.engines.fused import LeanDecoder

        self._lean = LeanDecoder(self.model, batch, max_len)
        self._tok = self._lean.tok
        self._compiled = None
        self._compiles = (device.type == "cuda" and self.mode != "none"
                          and (self._lean.fused or self.compile_quantized))

    def _record(self) -> None:
        self._out.index_copy_(1, self._idx, self._tok)
        self._idx.add_(1)

    def _prefill(self, input_ids: torch.Tensor) -> None:
        self._idx.zero_()
        self._lean.prefill(input_ids)
        self._record()

    def _step(self) -> None:
        self._lean.step()
        self._record()

    def _step_fn(self) -> Callable[[], None]:
        return super()._step_fn() if self._compiles else self._step

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        compiled = self._compiles and self._compiled is not None
        graph = "CUDA graph replay of one " if self._graph is not None else ""
        how = "torch.compile'd " if compiled else ""
        out["decode"] = f"{graph}{how}lean decode step"
        out.update(compiled=compiled, compile_mode=self.mode if compiled else "none",
                   **(self._lean.describe() if self._lean is not None else {}))
        if not compiled:
            out["compile_s"] = None
        return out


COMPILE_MODES = CompileEngine.modes
"""torch.compile modes `compile` offers: inductor's default (fusion, cuBLAS matmuls) and
autotuned Triton matmul templates with fused epilogues (minutes of compilation). `fused`
also takes `none` (its lean step uncompiled)."""

ENGINES: dict[str, type[Engine]] = {e.name: e for e in (
    LoopEngine, GenerateEngine, StaticEngine, GraphEngine, CompileEngine, FusedEngine)}
"""Engine name (`--set engine=...`) -> class."""

DEFAULT_CHAIN = {"cuda": ("fused", "graph", "loop"), "cpu": ("loop",)}
"""Engines tried in order when none is asked for: the first that prepares runs, and the
run says why the ones before it did not."""


def default_engine(device: str) -> str:
    """`fused` on CUDA (launch overhead removed, fewer kernels), `loop` on CPU."""
    return default_chain(device)[0]


def default_chain(device: str) -> tuple[str, ...]:
    """The engines tried, in order, for a run on `device` that asks for none."""
    return DEFAULT_CHAIN["cuda" if device.startswith("cuda") else "cpu"]
