"""Decode engines: how one inference request (prefill, then forced-length greedy decode)
is executed and timed.

`loop` is the runner's own loop over a KV cache, so the measured path holds nothing but
forward passes and an argmax. `eager` is `model.generate()`, kept as the baseline that
shows what the library's generic machinery costs. Both produce the same tokens. Later
engines (a static cache captured in a CUDA graph) slot in beside them in `ENGINES`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


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

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None) -> None:
        self.model = model
        self.new_tokens = new_tokens
        self._sync = sync or _nothing
        self.pad_token_id = pad_token_id

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        raise NotImplementedError


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

    def __init__(self, model: Any, new_tokens: int, sync: Callable[[], None] | None,
                 pad_token_id: int | None = None) -> None:
        super().__init__(model, new_tokens, sync, pad_token_id)
        self._cache_kw = cache_kwarg(model)

    def __call__(self, input_ids: torch.Tensor) -> tuple[RequestTiming, torch.Tensor]:
        model, sync, kw = self.model, self._sync, self._cache_kw
        with torch.inference_mode():
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
        with torch.inference_mode():
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


ENGINES: dict[str, type[Engine]] = {e.name: e for e in (LoopEngine, GenerateEngine)}
"""Engine name (`--set engine=...`) -> class."""
