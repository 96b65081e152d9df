"""The config of the finetuning family (runners.families.finetuning): the RunSpec's fields plus the
`--set` parameters of a fine-tuning run, checked on construction against runners.params
(choices, ranges, rules). Also importable from runners.families.finetuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from runners.families.base import FamilyConfig
from runners.techniques import peft_methods


@dataclass(frozen=True)
class FinetuningConfig(FamilyConfig):
    """A fine-tuning run: the RunSpec's fields plus the `--set` parameters below.

    `batch_size` is the micro-batch (rows per forward); an optimizer step takes
    `grad_accum` micro-batches. `steps` and `warmup` count optimizer steps.
    """

    family: ClassVar[str] = "finetuning"

    rank: int = 64
    """Adapter rank (LoRA family, VeRA, LoHa, LoKr; AdaLoRA's target rank)."""
    alpha: float = 128.0
    """LoRA alpha (scale alpha / rank; alpha / sqrt(rank) for rslora)."""
    dropout: float = 0.1
    """Adapter dropout (lora_dropout, vera_dropout; rank_dropout for LoHa/LoKr)."""
    target_modules: str = "all-linear"
    """`all-linear` or comma-separated module names the adapters wrap."""
    freeze_k: int = peft_methods.DEFAULT_FREEZE_K
    """`freeze`: how many of the last decoder blocks train."""
    loraplus_ratio: float = 16.0
    """`lora-plus`: learning rate of B over that of A."""
    pissa_niter: int = 4
    """`pissa`: fast-SVD iterations; 0 for the exact SVD."""
    virtual_tokens: int = 20
    """`prompt-tuning`: soft prompt length (added to every sequence)."""
    adalora_init_r: int | None = field(default=None, metadata={"kind": int})
    """`adalora`: starting rank; default 1.5 x rank."""
    lr: float | None = field(default=None, metadata={"kind": float})
    """Peak learning rate; default per technique (1e-4 for the LoRA family, 1e-5 full)."""
    weight_decay: float = 0.0
    lr_warmup_ratio: float = 0.1
    """Share of all optimizer steps spent in the linear learning-rate warm-up."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay, as a fraction of the peak learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold; 0 disables clipping."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    grad_ckpt: bool = False
    """Activation (gradient) checkpointing of the decoder blocks."""
    precision: str = "auto"
    """auto (bf16 on a bf16 GPU, else fp32), fp32, bf16 (bf16 compute, fp32 updates: full
    and freeze keep fp32 master copies, peft adapters train in fp32 under autocast),
    bf16-pure (all weights and optimizer state bf16, no master copy)."""
    packing: bool = True
    """Pack examples end to end into rows of exactly seq_len (no padding); false: one
    example a row, right-padded."""
    loss_chunk_rows: int | None = field(default=None, metadata={"kind": int})
    """Rows per cross-entropy chunk; default about 1 GiB of fp32 logits; 0: the model's own
    unchunked loss."""
    loss_kernel: str = "auto"
    """Who computes the chunked loss: `liger` (liger-kernel's fused linear cross-entropy,
    CUDA), `torch` (runners.engines.xent's chunks), `auto` (liger on CUDA where installed)."""
    eval_batches: int = 4
    """Held-out micro-batches scored for eval_loss; 0 skips the evaluation."""
    heldout_fraction: float = 0.1
    """Share of the dataset's examples held out (never trained on)."""
    save: bool = True
    """Save what was trained under RUN_DIR/adapter/."""
    sharding: str = "auto"
    """world_size > 1: ddp, fsdp2 or auto (runners.distributed)."""
    quality: str = "off"
    """lm-eval tasks scored on the adapted model after training, in a `quality` phase and
    window of its own (`off`, `suite`, or task names); the base model is scored on the same
    tasks once per model and task version (cached under the data home)."""
    quality_items: int = 50
    """Items per quality task: the suite generates this many; other tasks score their first N."""
    score_of: str | None = field(default=None, metadata={"kind": str})
    """Set by `efficientllm eval`: restore what stored run `score_of` trained (its RUN_DIR/
    adapter/) and score it on the quality tasks, without training or measuring again."""
    compile: str = "auto"
    """torch.compile: `layers` (each decoder block on its own; the blocks share one compiled
    graph: PyTorch's regional compilation), `model` (the whole decoder as one graph), `off`,
    or `auto`: `layers` on CUDA for the techniques of COMPILE_AUTO, off elsewhere. `true`
    means `layers`, `false` means `off`. Compilation runs in a `compile` phase before the
    warm-up (one forward and backward whose gradients are discarded); a compiler failure falls
    back to eager (an event and `compile_error` in the result's info), never ends the run."""
    peak_tflops: float | None = field(default=None, metadata={"kind": float})
    """Dense bf16 peak in TFLOP/s for mfu; default: measured on the GPU at load; None on
    CPU (no mfu)."""
    threads: int | None = field(default=None, metadata={"kind": int})
    """torch intra-op threads; default one fewer than the usable CPUs."""
    vlm_targets: str = "language"
    """Vision-language models: where the adapters go: the `language` model, the
    `projector`, or `both` (runners.families.vision_finetune)."""
    vlm_task: str = "captioning"
    """Vision-language models: the labels trained on: the image set's `captioning` captions
    or `vqa` answers."""
    train_vision: bool = False
    """Vision-language models: put adapters on the vision tower too (frozen by default)."""

    def hyper(self) -> peft_methods.Hyper:
        return peft_methods.Hyper(
            rank=self.rank, alpha=self.alpha, dropout=self.dropout,
            target_modules=self.target_modules, freeze_k=self.freeze_k,
            loraplus_ratio=self.loraplus_ratio, pissa_niter=self.pissa_niter,
            virtual_tokens=self.virtual_tokens, adalora_init_r=self.adalora_init_r,
            total_steps=self.warmup + self.steps)
