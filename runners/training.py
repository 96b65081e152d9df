"""One optimizer step, timed: the training-loop pieces every training family shares.

Why a module of its own: fine-tuning and pretraining measure the same thing, a training
step, and must measure it the same way. So the step (bf16 autocast, gradient accumulation
weighted by target tokens, gradient clipping, optimizer and schedule, a device sync at both
edges), the loss (cross-entropy over the vocabulary in chunks, so a 150k-token vocabulary
never materialises fp32 logits for a whole batch) and the schedule live here, with no
knowledge of PEFT, data sets or events.

The chunked loss computes the gradient of the output layer inside its forward pass, one
chunk of rows at a time (the fused linear-cross-entropy idea of Liger-Kernel / Apple's
Cut-Cross-Entropy, here in plain torch): peak memory is one chunk of logits, and no logits
are recomputed in the backward pass, so the step does the same FLOPs as the unchunked one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

IGNORE_INDEX = -100
"""Label of a position that takes no part in the loss (the transformers convention)."""
CHUNK_BYTES = 1 << 30
"""Default budget for one chunk of fp32 logits: rows per chunk = CHUNK_BYTES / (4 x vocab)."""

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


# -- chunked cross-entropy ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LossOptions:
    """Faster ways to run the chunked linear cross-entropy; the math stays the same.

    The default (both off) is the plain path every family uses. Only an nn.Linear head without
    a bias (or a bare weight) takes them; anything else runs the plain path. The fp32 GEMM is
    CUDA-only (elsewhere the plain accumulation runs).
    """

    compiled: bool = False
    """Run each chunk's softmax, loss and logit gradient as one torch.compile'd function
    (`xent_chunk`): two reads of the bf16 logits and one bf16 write, where the plain path
    writes and rereads fp32 probabilities."""
    fp32_gemm: bool = False
    """Accumulate the output layer's weight gradient in the GEMM itself (bf16 operands, fp32
    output, beta = 1: `addmm(out_dtype=float32)`), instead of a bf16 product per chunk that
    is then converted and added; also keeps each chunk's product in fp32."""

    def describe(self) -> str:
        parts = [p for p, on in (("compiled chunk", self.compiled),
                                 ("fp32-accumulating GEMM", self.fp32_gemm)) if on]
        return ", ".join(parts) or "eager"


LOG_TINY = math.log(torch.finfo(torch.float32).tiny)


def xent_chunk(logits: torch.Tensor, targets: torch.Tensor, grad_dtype: torch.dtype | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sum over rows of -log p_target in fp32, d(sum)/d logits = softmax - one_hot in
    `grad_dtype`, or None when grad_dtype is None) of one chunk of logits [rows, vocab].

    The loss is capped as the plain path caps it (p_target >= float32 tiny, 87.3 nats). Written
    for torch.compile: the one-hot is an index comparison the compiler fuses into the pass
    that writes the gradient (run eagerly, it would materialise a [rows, vocab] mask)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    logp = (x.gather(1, targets[:, None]) - lse).clamp_min(LOG_TINY)
    loss = -logp.sum()
    if grad_dtype is None:
        return loss, None
    onehot = targets[:, None] == torch.arange(x.shape[1], device=x.device)[None, :]
    return loss, (torch.exp(x - lse) - onehot.to(x.dtype)).to(grad_dtype)


_COMPILED_XENT: dict[str, Any] = {}


def compiled_xent_chunk() -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """`xent_chunk` under torch.compile (created once; static shapes: one graph for the full
    chunks and one for the last, shorter chunk)."""
    if "fn" not in _COMPILED_XENT:
        _COMPILED_XENT["fn"] = torch.compile(xent_chunk, dynamic=False)
    return _COMPILED_XENT["fn"]


_FP32_GEMM_STATE: dict[str, Any] = {"ok": None, "error": None}


def fp32_gemm_status() -> tuple[bool | None, str | None]:
    """(whether the fp32-accumulating GEMM ran; None: not tried yet, and the error if it
    failed and the plain accumulation took over)."""
    return _FP32_GEMM_STATE["ok"], _FP32_GEMM_STATE["error"]


def _accumulate_grad_w(grad_w: torch.Tensor, g: torch.Tensor, hc: torch.Tensor,
                       fp32_gemm: bool) -> None:
    """grad_w += g^T @ hc (grad_w fp32; g, hc in the compute dtype)."""
    if fp32_gemm and _FP32_GEMM_STATE["ok"] is not False and g.dtype != torch.float32 \
            and g.is_cuda:
        try:
            torch.addmm(grad_w, g.T, hc, out_dtype=torch.float32, out=grad_w)
            _FP32_GEMM_STATE["ok"] = True
            return
        except (RuntimeError, TypeError) as e:  # an older torch: the plain accumulation
            _FP32_GEMM_STATE.update(ok=False, error=f"{type(e).__name__}: {e}"[:300])
    grad_w += (g.T @ hc).float()


def default_chunk_rows(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk of fp32 logits takes about `chunk_bytes`."""
    return max(16, chunk_bytes // (4 * max(1, vocab_size)))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i W^T + b, y_i), its gradients computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int, compute_dtype: torch.dtype,
                options: LossOptions | None = None) -> torch.Tensor:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if options is not None and bias is None and options.compiled:
            return _LinearCrossEntropy._fast_forward(ctx, hidden, weight, targets, chunk_rows,
                                                     compute_dtype, options)
        fp32_gemm = options is not None and options.fp32_gemm
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if need_b and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        tiny = torch.finfo(torch.float32).tiny
        for start in range(0, h.shape[0], chunk_rows):
            hc = h[start:start + chunk_rows]
            yc = targets[start:start + chunk_rows]
            logits = hc @ w.T
            if bias is not None:
                logits = logits + bias.to(compute_dtype)
            # One fused pass from the (bf16) logits to fp32 probabilities; the loss is
            # -log p_y (exact in fp32 down to p_y = 1e-38, i.e. losses up to 87 nats).
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            rows = torch.arange(probs.shape[0], device=probs.device)
            total -= probs[rows, yc].clamp_min(tiny).log().sum()
            if not (need_h or need_w or need_b):
                continue
            # d(sum CE)/d logits = softmax - one_hot, built in place in the probabilities.
            probs[rows, yc] -= 1.0
            if grad_b is not None:
                grad_b += probs.sum(0)
            g = probs.to(compute_dtype)
            if grad_h is not None:
                grad_h[start:start + chunk_rows] = g @ w
            if grad_w is not None:
                if fp32_gemm:
                    _accumulate_grad_w(grad_w, g, hc, True)
                else:
                    grad_w += (g.T @ hc).float()
        ctx.save_for_backward(*(t if t is not None else torch.empty(0)
                                for t in (grad_h, grad_w, grad_b)))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        grads: list[torch.Tensor | None] = []
        for tensor, present, dtype in zip(saved, ctx.present, ctx.dtypes, strict=True):
            grads.append((tensor * grad_out).to(dtype) if present else None)
        return grads[0], grads[1], grads[2], None, None, None, None

    @staticmethod
    def _fast_forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                      targets: torch.Tensor, chunk_rows: int, compute_dtype: torch.dtype,
                      options: LossOptions) -> torch.Tensor:
        """The forward above with a compiled chunk (no bias): per chunk one torch.compile'd
        softmax/loss/gradient function (`xent_chunk`) and, with `fp32_gemm`, the fp32-
        accumulating weight-gradient GEMM. (Without compilation the forward above runs: run
        eagerly, `xent_chunk`'s mask and out-of-place passes would cost more than its
        in-place softmax.)"""
        need_h, need_w = ctx.needs_input_grad[:2]
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        chunk_fn = compiled_xent_chunk() if options.compiled else xent_chunk
        grad_dtype = compute_dtype if (need_h or need_w) else None
        for start in range(0, h.shape[0], chunk_rows):
            hc = h[start:start + chunk_rows]
            loss, g = chunk_fn(hc @ w.T, targets[start:start + chunk_rows], grad_dtype)
            total += loss
            if g is None:
                continue
            if grad_h is not None:
                grad_h[start:start + chunk_rows] = g @ w
            if grad_w is not None:
                _accumulate_grad_w(grad_w, g, hc, options.fp32_gemm)
        ctx.save_for_backward(*(t if t is not None else torch.empty(0)
                                for t in (grad_h, grad_w, None)))
        ctx.present = (grad_h is not None, grad_w is not None, False)
        ctx.dtypes = (hidden.dtype, weight.dtype, None)
        return total


def _head_params(head: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) when `head` is exactly a dense nn.Linear (or a bare weight tensor)."""
    if isinstance(head, torch.Tensor):
        return head, None
    if type(head) is nn.Linear:
        return head.weight, head.bias
    return None


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module | torch.Tensor,
                          targets: torch.Tensor, *, chunk_rows: int | None = None,
                          ignore_index: int = IGNORE_INDEX,
                          options: LossOptions | None = None) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies as a float32 scalar, number of scored tokens).

    Args:
        hidden: final hidden states `[..., H]`, already aligned with `targets` (shift first).
        head: the output layer: an `nn.Linear` or its weight `[V, H]`. Any other module
            (a LoRA-wrapped or quantized head) is applied chunk by chunk under activation
            checkpointing instead, which recomputes its forward in the backward pass.
        targets: class ids `[...]`; positions equal to `ignore_index` are skipped entirely
            (their rows never reach the output layer).
        chunk_rows: rows per chunk; default `default_chunk_rows(vocab)` (about 1 GiB of fp32
            logits).
        options: `LossOptions` for a bias-free dense head on CUDA; None: the plain path.

    Under bf16 autocast the output matmul runs in bf16 with fp32 softmax and loss.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    keep = y != ignore_index
    n = int(keep.sum())
    if n == 0:
        return hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum(), 0
    if n != y.numel():
        h, y = h[keep], y[keep]
    params = _head_params(head)
    if params is not None:
        weight, bias = params
        rows = chunk_rows or default_chunk_rows(weight.shape[0])
        dtype = (torch.get_autocast_dtype(h.device.type)
                 if torch.is_autocast_enabled(h.device.type) else weight.dtype)
        if options is None:
            return _LinearCrossEntropy.apply(h, weight, bias, y, rows, dtype), n
        return _LinearCrossEntropy.apply(h, weight, bias, y, rows, dtype, options), n
    assert isinstance(head, nn.Module)
    rows = chunk_rows or default_chunk_rows(int(getattr(head, "out_features", 0)) or 65536)

    def piece(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head(hc).float(), yc, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], rows):
        total = total + torch.utils.checkpoint.checkpoint(
            piece, h[start:start + rows], y[start:start + rows], use_reentrant=False)
    return total, n


def causal_lm_loss(hidden: torch.Tensor, head: nn.Module | torch.Tensor, labels: torch.Tensor,
                   *, num_items: int | float | torch.Tensor | None = None,
                   chunk_rows: int | None = None, ignore_index: int = IGNORE_INDEX
                   ) -> torch.Tensor:
    """Next-token loss: position t predicts labels[t + 1]; sum / `num_items` (default: the
    number of scored tokens here; pass the whole step's count under gradient accumulation)."""
    shifted = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    total, n = chunked_cross_entropy(hidden, head, shifted, chunk_rows=chunk_rows,
                                     ignore_index=ignore_index)
    denom = num_items if num_items is not None else max(1, n)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return total / denom


@dataclass(slots=True)
class LossTap:
    """The last cross-entropy `chunked_lm_loss` computed (detached): the task loss, apart
    from any penalty a wrapper adds to `outputs.loss` afterwards (AdaLoRA's)."""

    last: torch.Tensor | None = None


class _HiddenPassthrough(nn.Module):
    """Stands in for `lm_head` so the model returns hidden states; holds the real head."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextlib.contextmanager
def chunked_lm_loss(model: Any, *, chunk_rows: int | None = None) -> Iterator[LossTap]:
    """Within the block, `model(input_ids=..., labels=...)` computes its loss with
    `causal_lm_loss` instead of materialising full logits.

    `model` is a transformers causal LM (the one a PEFT wrapper holds, when wrapped). Its
    `lm_head` is swapped for a pass-through (so `outputs.logits` are hidden states) and its
    `loss_function` for the chunked one; both are restored on exit. Everything around the
    model's forward still runs: a PEFT prompt-tuning wrapper's virtual-token labels, an
    AdaLoRA wrapper's orthogonality penalty added to `outputs.loss`, and `num_items_in_batch`
    for token-weighted gradient accumulation. Yields a `LossTap` holding the last task loss.
    """
    head = model.lm_head
    tap = LossTap()
    passthrough = _HiddenPassthrough(head)

    def loss_function(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None = None,
                      num_items_in_batch: Any = None, ignore_index: int = IGNORE_INDEX,
                      **_: Any) -> torch.Tensor:
        loss = causal_lm_loss(logits, head, labels, num_items=num_items_in_batch,
                              chunk_rows=chunk_rows, ignore_index=ignore_index)
        tap.last = loss.detach().clone()  # a wrapper may add its penalty in place
        return loss

    had_own = "_loss_function" in vars(model)
    previous = vars(model).get("_loss_function")
    model.lm_head = passthrough
    model.loss_function = loss_function
    try:
        yield tap
    finally:
        model.lm_head = head
        if had_own:
            model.loss_function = previous
        else:
            with contextlib.suppress(AttributeError):
                del model._loss_function


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
    """

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, *, device: str,
                 amp: bool = False, scheduler: Any = None, max_grad_norm: float = 1.0,
                 loss_fn: Callable[[Any, MicroBatch, int], torch.Tensor] = hf_loss,
                 after_backward: Callable[[int], None] | None = None,
                 params: Sequence[torch.Tensor] | None = None,
                 tap: LossTap | None = None, master: MasterWeights | None = None) -> None:
        self.model = model
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
        for batch in micro_batches:
            if self.tap is not None:
                self.tap.last = None
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
        with torch.no_grad():
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
