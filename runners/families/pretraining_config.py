"""The config of the pretraining family (runners.families.pretraining): the RunSpec's fields plus
the
`--set` parameters of a pretraining run, checked on construction against runners.params
(choices, ranges, rules), and the pure helpers the run uses (the learning-rate schedule, the
matmul peak). Also importable from runners.families.pretraining.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from runners.families.base import FamilyConfig

PEAK_MATMUL_N = 8192
"""Side of the square bf16 matmul whose rate is the measured peak."""


@dataclass(frozen=True)
class PretrainingConfig(FamilyConfig):
    """A pretraining run: the RunSpec's fields plus the `--set` parameters below."""

    family: ClassVar[str] = "pretraining"

    lr: float = 6e-4
    """Peak learning rate (AdamW)."""
    lr_warmup_steps: int = -1
    """Linear learning-rate warm-up steps; -1: a tenth of warmup + steps."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at this share of `lr` on the last step."""
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 turns it off."""
    precision: str = "auto"
    """`bf16` autocast (fp32 master weights), `fp32`, or `auto`: bf16 on CUDA, fp32 on CPU."""
    peak_tflops: float | None = field(default=None, metadata={"kind": float})
    """Dense bf16 peak for `mfu`; None: measured on the device before training (CUDA)."""
    measure_peak: bool = True
    """Measure the matmul peak when `peak_tflops` is not given (CUDA only)."""
    eval_tokens: int = 4096
    """Held-out tokens scored for `eval_ppl`; 0 skips the evaluation."""
    save: bool = False
    """Write RUN_DIR/checkpoint.pt (weights and config) after the run."""
    sharding: str = "auto"
    """world_size > 1: ddp, fsdp2 or auto (runners.distributed)."""
    threads: int | None = field(default=None, metadata={"kind": int})
    """torch intra-op threads; None: one fewer than the CPUs this process may use."""
    experts: int = 8
    top_k: int = 2
    moe_match: str = "flops"
    """`flops` (equal active FLOPs) or `expert` (experts as wide as the dense FFN)."""
    aux_loss_coef: float = 0.01
    loss_chunk_tokens: int = 0
    """Tokens per cross-entropy chunk; 0: about 1 GiB of fp32 logits a chunk."""
    loss_kernel: str = "auto"
    """Who computes the loss: `liger` (liger-kernel's fused linear cross-entropy, CUDA),
    `torch` (runners.engines.xent's chunks), `auto` (liger on CUDA where installed)."""
    compile: str = "auto"
    """torch.compile each decoder block and the loss chunk: `true`, `false`, or `auto` (on for
    decoder variants on CUDA, off on CPU and for the transformers baselines). Compilation runs
    before the warm-up window; if it fails the run goes on eager, the reason in the info."""
    checkpointing: str = "auto"
    """Activation checkpointing of every block: `true`, `false`, or `auto` (on for Mamba
    without the fused mamba_ssm kernels, off otherwise)."""
    recurrence: str = "auto"
    """How Mamba's selective scan and RWKV's WKV run without their fused packages: `torch`
    (chunked torch ops for Mamba, transformers' loop for RWKV), `triton` (CUDA only: our
    Triton scan for Mamba, flash-linear-attention's WKV for RWKV), or `auto` (triton where
    it runs, else torch)."""
    nsa_block: int = 64
    """nsa: tokens per block, compressed and selected (a power of two dividing seq_len)."""
    nsa_blocks: int = 8
    """nsa: blocks each query attends at full resolution (1 initial + 2 local among them)."""
    nsa_window: int = 256
    """nsa: sliding-window tokens; 0 drops the window branch."""


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to min_ratio x peak at the end."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = total - warmup - 1
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def measure_matmul_tflops(device: str, n: int = PEAK_MATMUL_N, rounds: int = 5,
                          reps: int = 10) -> float:
    """Median rate of `rounds` x `reps` back-to-back n x n x n bf16 matmuls on random data, in
    TFLOP/s (CUDA events). About 0.5 s on an H100; the MFU denominator of this run."""
    dev_ = torch.device(device)
    a = torch.randn(n, n, device=dev_, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev_, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=dev_, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        rates.append(2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12)
    del a, b, out
    return statistics.median(rates)
