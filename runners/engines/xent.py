"""The chunked cross-entropy every training family shares.

Cross-entropy over the vocabulary in chunks of rows, so a 150k-token vocabulary never
materialises fp32 logits for a whole batch. The loss computes the gradient of the output
layer inside its forward pass, one chunk of rows at a time (the fused linear-cross-entropy
idea of Liger-Kernel / Apple's Cut-Cross-Entropy, here in plain torch): peak memory is one
chunk of logits, and no logits are recomputed in the backward pass, so the step does the same
FLOPs as the unchunked one. `chunked_lm_loss` puts it under a transformers causal LM.

`LossOptions.kernel` picks who computes it for a dense head: `torch` (the chunks above: the
CPU path, kept because a 151,936-token vocabulary at 16k tokens would otherwise hold 10 GB of
fp32 logits and as much again in their gradient) or `liger` (liger-kernel's fused linear
cross-entropy, Triton, CUDA only; the optional `kernels` extra), resolved from the `auto |
liger | torch` parameter by `resolve_loss_kernel`. liger is imported only when it runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
"""Label of a position that takes no part in the loss (the transformers convention)."""
CHUNK_BYTES = 1 << 30
"""Default budget for one chunk of fp32 logits: rows per chunk = CHUNK_BYTES / (4 x vocab)."""


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
    kernel: str = "torch"
    """`torch` (the chunked path of this module) or `liger` (liger-kernel's fused linear
    cross-entropy on CUDA, for a dense head; `compiled` and `fp32_gemm` do not apply)."""

    def describe(self) -> str:
        if self.kernel == LIGER:
            return "liger-kernel fused linear cross-entropy"
        parts = [p for p, on in (("compiled chunk", self.compiled),
                                 ("fp32-accumulating GEMM", self.fp32_gemm)) if on]
        return ", ".join(parts) or "eager"


LOSS_KERNELS = ("auto", "liger", "torch")
"""Values of the `loss_kernel` parameter (pretraining and fine-tuning)."""
LIGER = "liger"
LIGER_PACKAGE = "liger-kernel==0.8.5"


def liger_installed() -> bool:
    """liger-kernel is importable (it is not imported here)."""
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_loss_kernel(requested: str, device: str) -> str:
    """`auto` -> `liger` on CUDA with liger-kernel installed, else `torch`; `torch` as given;
    `liger` as given where it can run. ValueError, in one line, for an unknown value or for
    `liger` off CUDA or without the package."""
    if requested not in LOSS_KERNELS:
        raise ValueError(f"unknown loss_kernel {requested!r} (choose from "
                         f"{', '.join(LOSS_KERNELS)})")
    cuda = device.startswith("cuda")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        return LIGER if cuda and liger_installed() else "torch"
    if not cuda:
        raise ValueError(f"loss_kernel=liger needs a CUDA device (device {device}); use "
                         "loss_kernel=torch or auto")
    if not liger_installed():
        raise ValueError(f"loss_kernel=liger needs the liger-kernel package (pip install "
                         f"{LIGER_PACKAGE}, the `kernels` extra); use loss_kernel=torch or auto")
    return LIGER


def liger_chunk_const(rows: int, tokens: int, hidden: int, vocab: int) -> int:
    """liger's `chunk_mem_const` whose chunks come closest to `rows` rows (liger sizes a chunk
    as next_pow2(tokens / ceil(vocab / (const x hidden))) rows)."""
    return max(1, round(vocab * min(rows, tokens) / max(1, hidden * tokens)))


def _use_liger(options: LossOptions | None, h: torch.Tensor) -> bool:
    """Whether the loss of `h` runs liger's kernel: asked for, and on CUDA (elsewhere the
    chunked torch path runs)."""
    return options is not None and options.kernel == LIGER and h.is_cuda


def _liger_sum(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               y: torch.Tensor, rows: int) -> torch.Tensor:
    """Sum of the token cross-entropies through liger's fused linear cross-entropy (logits
    a chunk of about `rows` rows at a time; weight and bias gradients accumulated in fp32)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    const = liger_chunk_const(rows, h.shape[0], h.shape[1], weight.shape[0])
    loss = liger_fused_linear_cross_entropy(h, weight, y, bias, ignore_index=IGNORE_INDEX,
                                            reduction="sum", accum_dtype=torch.float32,
                                            chunk_mem_const=const)
    return loss.float()


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
        options: `LossOptions` for a dense head (the kernel; the compiled chunk and the fp32
            GEMM apply to a bias-free head on CUDA); None: the plain chunked path.

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
        if _use_liger(options, h):
            return _liger_sum(h, weight, bias, y, rows), n
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
                   chunk_rows: int | None = None, ignore_index: int = IGNORE_INDEX,
                   options: LossOptions | None = None) -> torch.Tensor:
    """Next-token loss: position t predicts labels[t + 1]; sum / `num_items` (default: the
    number of scored tokens here; pass the whole step's count under gradient accumulation).
    `options`: as `chunked_cross_entropy` takes them."""
    shifted = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    total, n = chunked_cross_entropy(hidden, head, shifted, chunk_rows=chunk_rows,
                                     ignore_index=ignore_index, options=options)
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
def chunked_lm_loss(model: Any, *, chunk_rows: int | None = None,
                    options: LossOptions | None = None) -> Iterator[LossTap]:
    """Within the block, `model(input_ids=..., labels=...)` computes its loss with
    `causal_lm_loss` instead of materialising full logits.

    `model` is a transformers causal LM (the one a PEFT wrapper holds, when wrapped). Its
    `lm_head` is swapped for a pass-through (so `outputs.logits` are hidden states) and its
    `loss_function` for the chunked one; both are restored on exit. Everything around the
    model's forward still runs: a PEFT prompt-tuning wrapper's virtual-token labels, an
    AdaLoRA wrapper's orthogonality penalty added to `outputs.loss`, and `num_items_in_batch`
    for token-weighted gradient accumulation. Yields a `LossTap` holding the last task loss.
    `options` (e.g. the liger kernel) go to `chunked_cross_entropy`.
    """
    head = model.lm_head
    tap = LossTap()
    passthrough = _HiddenPassthrough(head)

    def loss_function(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None = None,
                      num_items_in_batch: Any = None, ignore_index: int = IGNORE_INDEX,
                      **_: Any) -> torch.Tensor:
        loss = causal_lm_loss(logits, head, labels, num_items=num_items_in_batch,
                              chunk_rows=chunk_rows, ignore_index=ignore_index,
                              options=options)
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
