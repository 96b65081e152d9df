"""One optimizer step, timed: the training-loop pieces every training family shares.

Why a module of its own: fine-tuning and pretraining measure the same thing, a training
step, and must measure it the same way. So the step (bf16 autocast, gradient accumulation
weighted by target tokens, gradient clipping, optimizer and schedule, a device sync at both
edges), the loss (cross-entropy over the vocabulary in chunks, so a 150k-token vocabulary
never materialises fp32 logits for a whole batch: runners.engines.xent)
and the schedule live here, with no knowledge of PEFT, data sets or events.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from runners import distributed
from runners.engines.xent import IGNORE_INDEX, LossTap

Precision = Literal["fp32", "bf16", "bf16-pure"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "bf16-pure")
"""fp32: everything in float32. bf16: bf16 compute, fp32 updates: frozen weights in bf16;
trained weights either in bf16 with an fp32 master copy the optimizer steps (`MasterWeights`,
the Megatron-LM / DeepSpeed scheme) or in fp32 under bf16 autocast (peft adapters).
bf16-pure: every weight and the optimizer state in bf16, no master copy (least memory and
traffic; updates smaller than a bf16 ulp of the weight are lost)."""


# -- precision and optimizer -----------------------------------------------------------------

def bf16_supported(device: str) -> bool:
    """Whether `device` runs bf16 matmuls natively (CUDA compute capability 8.0+)."""
    if not device.startswith("cuda"):
        return False
    return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: str) -> Precision:
    """`auto` -> `bf16` on a bf16-capable GPU, else `fp32` (CPUs without AMX emulate bf16
    matmuls, which is slower than fp32 there). Explicit choices are kept as given."""
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (choose from auto, "
                         f"{', '.join(PRECISIONS)})")
    return requested  # type: ignore[return-value]


def autocast(device: str, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on `device` when `amp`, else nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class MasterWeights:
    """fp32 master copies of low-precision trained weights.

    The model keeps its trained weights in bf16, so forward and backward run entirely in
    bf16 with no casts; the optimizer steps fp32 copies, so small updates are not rounded
    away. Per step: `pull_grads` (bf16 grads -> fp32 master grads, freeing the bf16 ones),
    clip and step on `params`, then `push` (fp32 masters -> bf16 weights).
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.model_params = list(params)
        self.params = [nn.Parameter(p.detach().float().clone()) for p in self.model_params]
        for master in self.params:
            master.grad = torch.zeros_like(master)

    def pull_grads(self) -> None:
        for p, master in zip(self.model_params, self.params, strict=True):
            if p.grad is None:
                master.grad.zero_()
            else:
                master.grad.copy_(p.grad)
                p.grad = None

    @torch.no_grad()
    def push(self) -> None:
        torch._foreach_copy_(self.model_params, self.params)


def adamw(params: Any, *, lr: float, device: str, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over `params` (tensors or param groups): fused kernels on CUDA, foreach on CPU."""
    cuda = device.startswith("cuda")
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             fused=True if cuda else None, foreach=None if cuda else True)


def cosine_lr_factor(step: int, *, total_steps: int, warmup_steps: int,
                     min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up from
    1/(warmup+1) to 1 over `warmup_steps`, then a half cosine from 1 towards `min_ratio`,
    reached one step after the last (the decay of transformers'
    `get_cosine_schedule_with_warmup`, with a floor; its warm-up starts at 0 instead)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `cosine_lr_factor` to every param group's own learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr_factor(s, total_steps=total_steps,
                                              warmup_steps=warmup_steps, min_ratio=min_ratio))


# -- the step -------------------------------------------------------------------------------

MicroBatch = Mapping[str, torch.Tensor]
"""Keyword arguments of one forward: input_ids, labels, and optionally attention_mask."""


@dataclass(frozen=True, slots=True)
class StepStats:
    """What one optimizer step did and how long it took."""

    latency_s: float
    """Wall time of the step, device-synchronised at both edges."""
    loss: float
    """Mean cross-entropy over the step's target tokens (the task loss)."""
    objective: float
    """What the optimizer minimised: the loss plus any penalty a wrapper adds."""
    lr: float
    """Learning rate of the first param group during this step."""
    tokens: int
    """Tokens processed, padding excluded (attention_mask ones, or every position)."""
    target_tokens: int
    """Tokens scored by the loss."""
    samples: int
    """Sequences (rows) processed."""
    grad_norm: float | None
    """Total gradient norm before clipping; None when clipping is off."""


def count_tokens(batch: MicroBatch) -> tuple[int, int, int]:
    """(tokens without padding, scored next-token targets, rows) of one micro-batch."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else ids.numel()
    labels = batch.get("labels")
    targets = int((labels[..., 1:] != IGNORE_INDEX).sum()) if labels is not None else 0
    return tokens, targets, int(ids.shape[0])


def hf_loss(model: Any, batch: MicroBatch, num_items: int) -> torch.Tensor:
    """The default loss: the model's own forward with labels (chunked inside
    `chunked_lm_loss`), normalised by the whole step's target count."""
    return model(**batch, use_cache=False, num_items_in_batch=num_items).loss


class TrainStep:
    """Runs one optimizer step over a list of micro-batches and times it.

    Per step: sync; for each micro-batch forward (under bf16 autocast when `amp`) and
    backward, the loss normalised by the step's total target tokens; `after_backward(step)`
    (AdaLoRA's rank allocation); with `master`, gradients move to the fp32 master copies;
    gradient clipping; optimizer and scheduler step; zero grads (or push the masters back);
    sync. The loss is read back once per step. With a `tap` (from `chunked_lm_loss`) the
    reported loss is the task cross-entropy even when the objective carries a penalty.
    `params` (default: the optimizer's) are the tensors whose gradients are clipped.
    In a multi-rank run (runners.distributed) the model runs under DDP, its gradients
    all-reduced on each step's last micro-batch only; under fsdp2 it was sharded before the
    optimizer was made.
    """

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, *, device: str,
                 amp: bool = False, scheduler: Any = None, max_grad_norm: float = 1.0,
                 loss_fn: Callable[[Any, MicroBatch, int], torch.Tensor] = hf_loss,
                 after_backward: Callable[[int], None] | None = None,
                 params: Sequence[torch.Tensor] | None = None,
                 tap: LossTap | None = None, master: MasterWeights | None = None) -> None:
        self.model = distributed.wrap_ddp(model, distributed.current())
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.amp = amp
        self.master = master
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn
        self.after_backward = after_backward
        self.params = list(params) if params is not None else [
            p for g in optimizer.param_groups for p in g["params"]]
        self.tap = tap
        self.steps_done = 0
        self._sync = (lambda: torch.cuda.synchronize(torch.device(device))) \
            if device.startswith("cuda") else (lambda: None)

    def __call__(self, micro_batches: Sequence[MicroBatch]) -> StepStats:
        counts = [count_tokens(b) for b in micro_batches]
        num_items = max(1, sum(c[1] for c in counts))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self._sync()
        t0 = time.perf_counter()
        objective = torch.zeros((), dtype=torch.float32, device=self.device)
        task = torch.zeros((), dtype=torch.float32, device=self.device)
        for i, batch in enumerate(micro_batches):
            if self.tap is not None:
                self.tap.last = None
            with distributed.no_sync(self.model, last=i == len(micro_batches) - 1):
                with autocast(self.device, self.amp):
                    loss = self.loss_fn(self.model, batch, num_items)
                loss.backward()
            objective += loss.detach().float()
            tapped = self.tap.last if self.tap is not None else None
            task += (tapped if tapped is not None else loss.detach()).float()
        if self.after_backward is not None:
            self.after_backward(self.steps_done)
        if self.master is not None:
            self.master.pull_grads()
        norm = None
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.master is not None:
            self.master.push()  # master grads are overwritten by the next pull
        else:
            self.optimizer.zero_grad(set_to_none=True)
        values = torch.stack((task, objective)).tolist()
        grad_norm = float(norm) if norm is not None else None
        self._sync()
        latency = time.perf_counter() - t0
        self.steps_done += 1
        return StepStats(latency_s=latency, loss=values[0], objective=values[1], lr=lr,
                         tokens=sum(c[0] for c in counts), target_tokens=num_items,
                         samples=sum(c[2] for c in counts), grad_norm=grad_norm)


def evaluate_loss(model: Any, batches: Sequence[MicroBatch], *, device: str,
                  amp: bool = False) -> float | None:
    """Mean next-token loss over `batches`, weighted by target tokens; None without targets."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), distributed.gathered():
            for batch in batches:
                _, n, _ = count_tokens(batch)
                if n == 0:
                    continue
                with autocast(device, amp):
                    loss = model(**batch, use_cache=False, num_items_in_batch=n).loss
                total += float(loss) * n
                count += n
    finally:
        model.train(was_training)
    return total / count if count else None


def matmul_peak_tflops(device: str, *, size: int = 8192, reps: int = 10) -> float | None:
    """Measured dense bf16 matmul rate on a CUDA device in TFLOP/s (random operands, median
    of `reps` timed products after warm-up); None off CUDA."""
    if not device.startswith("cuda"):
        return None
    dev = torch.device(device)
    a = torch.randn(size, size, device=dev, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    del a, b
    return 2.0 * size ** 3 / times[len(times) // 2] / 1e12
