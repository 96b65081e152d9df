"""The decode engine of vision-language requests: image + prompt in, forced-length greedy
decode out, with the vision encoder's share of the time to first token timed apart.

The loop is the text `loop` engine's (runners.engines.decode.LoopEngine: prefill over a
DynamicCache, then one forward and an argmax per token, EOS ignored) with the model's own
multimodal forward as the prefill: the model encodes the image, projects it and merges it
into the prompt's embeddings, as `generate()` would. A forward pre-hook on the vision tower
and a forward hook on the projector each synchronise the device and read the clock, so
`vision_s` is the encoder + projector wall time inside the prefill (the two extra
synchronisations are the price of timing it apart: they cost a CUDA launch queue drain
each, nothing on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from runners.engines.decode import new_cache
from runners.models import vlm

Inputs = Mapping[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class VisionTiming:
    """Timing of one vision-language request (a batch of image + prompt pairs)."""

    latency_s: float
    """Request start to last token, device-synchronised."""
    ttft_s: float
    """Request start to the first generated token (vision encoder, prefill, one argmax)."""
    vision_s: float | None
    """Vision tower + projector inside the prefill; None when the hooks did not fire."""


class VisionLoopEngine:
    """Runs one request: model inputs -> (timing, generated ids [batch, new_tokens])."""

    name = "loop"

    def __init__(self, model: Any, arch: str, new_tokens: int,
                 sync: Callable[[], None] | None) -> None:
        self.model = model
        self.arch = arch
        self.new_tokens = new_tokens
        self._sync = sync or (lambda: None)
        self._marks: list[int] = []
        vision = vlm.part(model, arch, "vision")
        projector = vlm.part(model, arch, "projector")
        self._hooks = [vision.register_forward_pre_hook(self._start),
                       projector.register_forward_hook(self._end)]

    def _start(self, *_: Any) -> None:
        if not self._marks:
            self._sync()
            self._marks.append(time.perf_counter_ns())

    def _end(self, *_: Any) -> None:
        self._sync()
        if len(self._marks) == 1:
            self._marks.append(time.perf_counter_ns())
        elif len(self._marks) == 2:  # a projector run twice (tiles): keep the last
            self._marks[1] = time.perf_counter_ns()

    def prepare(self, inputs: Inputs) -> None:
        """Nothing to allocate: the cache is dynamic. Kept for the engine interface."""

    def prefill(self, inputs: Inputs) -> torch.Tensor:
        """Prefill only (image encode, prompt forward, first argmax): the unit of the
        `prefill` window. Returns the first tokens [batch, 1]."""
        with torch.no_grad():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1,
                             cache=new_cache(self.model))
            return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def __call__(self, inputs: Inputs, new_tokens: int | None = None
                 ) -> tuple[VisionTiming, torch.Tensor]:
        model, sync = self.model, self._sync
        steps = self.new_tokens if new_tokens is None else new_tokens
        mask = inputs.get("attention_mask")
        with torch.no_grad():
            self._marks = []
            sync()
            t0 = time.perf_counter_ns()
            cache = new_cache(model)
            out = model(**inputs, use_cache=True, logits_to_keep=1, cache=cache)
            token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            sync()
            t_first = time.perf_counter_ns()
            tokens = [token]
            for _ in range(steps - 1):
                extra = {}
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                    extra = self._positions(mask)
                out = model(input_ids=token, attention_mask=mask, use_cache=True, cache=cache,
                            **extra)
                token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                tokens.append(token)
            sync()
            t1 = time.perf_counter_ns()
        marks = self._marks
        vision = (marks[1] - marks[0]) / 1e9 if len(marks) == 2 else None
        return (VisionTiming((t1 - t0) / 1e9, (t_first - t0) / 1e9, vision),
                torch.cat(tokens, dim=1))

    def _positions(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Qwen2-VL's M-RoPE position of the next token under a left-padded mask (its
        forward would build positions for the whole mask; generate() slices them the same
        way); other models derive it from the cache and the mask themselves."""
        if self.arch != "qwen2_vl":
            return {}
        deltas = self.model.model.rope_deltas
        pos = (mask.long().cumsum(-1) - 1)[:, -1:]
        batch = pos.shape[0]
        pos = pos.view(1, batch, 1).expand(3, batch, 1)
        return {"position_ids": pos + deltas.repeat_interleave(batch // deltas.shape[0], dim=0)}

    def close(self) -> None:
        """Remove the timing hooks from the model."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "kv_cache": "dynamic", "cuda_graph": False,
                "compiled": False, "prefill": "model forward with pixels (vision timed by "
                "hooks)", "decode": "own loop, eager step"}
