"""Fine-tuning of vision-language models in the finetuning family: the PEFT arms with
adapters on the language model, the projector, or both (`--set vlm_targets`), the vision
tower frozen unless `--set train_vision=true`, trained on image + prompt -> caption or VQA
answer (`--set vlm_task`) from the shipped image set or a local JSONL.

The run is the text path's (runners.families.finetuning): the same TrainStep, cosine
schedule, windows, step events and metrics (ST counts the whole VLM's parameters); only the
batches differ. Each row is [BOS, image tokens, prompt, target, EOS], right-padded within
its micro-batch, with the loss on the target and EOS only; the images go in as pixels.
`seq_len` is not used: a row is as long as its image tokens and texts.

Adapters go on the nn.Linear layers of the chosen parts (those named by `target_modules`
when it is not all-linear), passed to peft by their full names, so a part that is not
chosen gets none. Model FLOPs per token are the text formula over the language model's
blocks with every parameter of the VLM in N (an upper bound when the vision tower is
frozen: its backward is counted though it does not run).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from runners.data import images as image_data
from runners.engines import training
from runners.errors import BadInput, Unsupported
from runners.models import vlm
from runners.protocol import RunResult
from runners.system import device as dev
from runners.techniques import peft_methods

FinetuningFamily = Any
"""runners.families.finetuning.FinetuningFamily (not imported: it imports this module)."""
UNSUPPORTED = ("full", "freeze", "prompt-tuning", "qlora")
"""Techniques whose text path assumes a causal LM's own blocks or embeddings."""
PARTS = {"language": ("language",), "projector": ("projector",),
         "both": ("language", "projector")}


def check(fam: FinetuningFamily) -> None:
    """What a VLM fine-tune refuses before the device lock (its data included)."""
    c = fam.config
    if c.technique in UNSUPPORTED:
        raise Unsupported(f"{c.technique} is not run on vision-language models; the PEFT "
                          "arms are (lora, dora, rslora, pissa, olora, vera, loha, lokr, ia3, "
                          "adalora, lora-plus)")
    if c.quality != "off":
        raise Unsupported("--set quality runs lm-eval text tasks; a VLM fine-tune scores "
                          "eval_loss on held-out images")
    image_data.check_head(c.dataset or image_data.SHIPPED)


def target_names(model: Any, arch: str, parts: tuple[str, ...], target_modules: str,
                 train_vision: bool) -> list[str]:
    """Full names of the nn.Linear layers that get adapters: inside the chosen parts (and
    the vision tower with `train_vision`), filtered by `target_modules` unless all-linear;
    never the output head."""
    chosen = list(parts) + (["vision"] if train_vision else [])
    prefixes = vlm.part_prefixes(model, arch)
    wanted = None if target_modules in ("all-linear", "all") else {
        t.strip() for t in target_modules.split(",") if t.strip()}
    projector = prefixes["projector"] + "."
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if wanted is not None and name.split(".")[-1] not in wanted and name not in wanted:
            continue
        for p in chosen:
            inside = name.startswith(prefixes[p] + ".")
            if p == "vision" and name.startswith(projector):
                inside = False  # Qwen2-VL's merger sits inside its vision module
            if inside:
                names.append(name)
                break
    return names


def _rows(items: list[image_data.Item], pictures: list[Any], prompter: vlm.Prompter,
          task: str, eos: int | None) -> list[tuple[list[int], list[int], Any]]:
    from runners.data import images as img
    from runners.families.vision_metrics import reference_of
    from runners.models.tokenizer import ByteTokenizer

    rows = []
    for item, picture in zip(items, pictures, strict=True):
        target = reference_of(item, task)
        if target is None:
            continue
        prompt = prompter.ids(img.prompt(item, task))
        answer = ByteTokenizer().encode(" " + target) + ([] if eos is None else [eos])
        rows.append((prompt + answer, [-100] * len(prompt) + answer, picture))
    return rows


def _batch(rows: list[tuple[list[int], list[int], Any]], prompter: vlm.Prompter,
           pad: int, device: str) -> dict[str, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = [r[0] + [pad] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [-100] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
           "attention_mask": torch.tensor(mask), **prompter.pixels([r[2] for r in rows])}
    if prompter.card.arch == "qwen2_vl":
        out["mm_token_type_ids"] = (out["input_ids"] == prompter.card.vision.image_token_id
                                    ).long()
    return {k: v.to(device) for k, v in out.items()}


def run(fam: FinetuningFamily, param_count: Any, train_flops_per_token: Any) -> RunResult:
    """One VLM fine-tuning run (the module docstring's shape).

    Args:
        fam: The finetuning family running it (its windows, steps and metrics are used).
        param_count: runners.families.finetuning.ParamCount.
        train_flops_per_token: runners.families.finetuning.train_flops_per_token.
    """
    c, ctx, card = fam.config, fam.ctx, fam.card
    ctx.phase("load", model=c.model, technique=c.technique, vlm_targets=c.vlm_targets)
    threads = dev.set_threads(c.threads)
    precision = training.resolve_precision(c.precision, c.device)
    data = image_data.load(c.dataset, ctx.home)
    items = list(data.items)
    pictures = image_data.open_images(items, data.source)
    torch.manual_seed(c.seed)
    built = vlm.load(card, torch.float32 if precision == "fp32" else torch.bfloat16,
                     c.device, c.seed, trust_remote_code=False)
    prompter = vlm.prompter_for(card)
    if prompter.processor is not None:
        raise Unsupported("fine-tuning local VLM weights through their processor is not "
                          "built yet; random-weight shapes and byte-tokenizer models train")
    rows = _rows(items, pictures, prompter, c.vlm_task, card.eos_token_id)
    if len(rows) < 2:
        raise BadInput(f"dataset {data.source!r} has fewer than 2 records with a "
                       f"{c.vlm_task} target")
    held = max(1, math.floor(len(rows) * c.heldout_fraction))
    train_rows, held_rows = rows[:-held], rows[-held:]
    pad = card.pad_token_id if card.pad_token_id is not None else 0
    n_micro = min((c.warmup + c.steps) * c.grad_accum, 64)
    train = [_batch([train_rows[(i * c.batch_size + k) % len(train_rows)]
                     for k in range(c.batch_size)], prompter, pad, c.device)
             for i in range(n_micro)]
    evals = [_batch(held_rows[i:i + c.batch_size], prompter, pad, c.device)
             for i in range(0, len(held_rows), c.batch_size)][:c.eval_batches]

    names = target_names(built.model, card.arch, PARTS[c.vlm_targets], c.target_modules,
                         c.train_vision)
    if not names:
        raise BadInput(f"no linear layer of the {c.vlm_targets} part matches target_modules="
                       f"{c.target_modules!r}")
    amp = precision == "bf16"
    hyper = replace(c.hyper(), target_modules=",".join(names))
    prepared = peft_methods.prepare(c.technique, built.model, hyper,
                                    adapter_dtype_fp32=amp or precision == "fp32")
    prepared.model.train()
    trainable = prepared.trainable()
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in prepared.model.parameters())
    lr = c.lr if c.lr is not None else prepared.method.default_lr
    optimizer = prepared.make_optimizer(lr, c.weight_decay, c.device)
    total_steps = c.warmup + c.steps
    scheduler = training.cosine_schedule(
        optimizer, total_steps=total_steps,
        warmup_steps=math.floor(c.lr_warmup_ratio * total_steps), min_ratio=c.min_lr_ratio)
    lm = vlm.part(built.model, card.arch, "language")
    blocks = list(getattr(lm, "layers", []))
    tokens = sum(len(r[0]) for r in train_rows) / len(train_rows)
    flops_per_token = train_flops_per_token(
        total_params=n_total, trainable_params=n_trainable,
        block_params=[sum(p.numel() for p in b.parameters()) for b in blocks], first_block=0,
        d_attn=card.num_heads * card.head_dim, context_len=round(tokens))
    peak_tflops, peak_source = fam._peak(c)  # noqa: SLF001

    meter = dev.window_meter(c.device, dev.sync_fn(c.device), ctx.sample_device)
    step = training.TrainStep(prepared.model, optimizer, device=c.device, amp=amp,
                              scheduler=scheduler, max_grad_norm=c.max_grad_norm,
                              after_backward=prepared.after_backward, params=trainable)
    fam._steps("warmup", 0, c.warmup, train, step, meter)  # noqa: SLF001
    dev.reset_peak_memory(c.device)
    stats, window = fam._steps("measure", c.warmup, c.steps, train, step, meter)  # noqa: SLF001
    assert window is not None
    peak_alloc, peak_reserved = dev.peak_memory_gib(c.device)
    eval_loss = None
    if evals:
        ctx.phase("eval", batches=len(evals))
        eval_loss = training.evaluate_loss(prepared.model, evals, device=c.device, amp=amp)
    saved: list[str] = []
    if c.save:
        ctx.phase("save", path=str(ctx.run_dir / "adapter"))
        saved = peft_methods.save(prepared, ctx.run_dir / "adapter")
    metrics = fam._metrics(  # noqa: SLF001
        stats, window, param_count(built.size.total_params, n_total, n_trainable), peak_alloc,
        peak_reserved, eval_loss, flops_per_token, peak_tflops,
        random_weights=built.weights == "random")
    by_part = {p: sum(t.numel() for n, t in prepared.model.named_parameters()
                      if t.requires_grad and f".{vlm.part_prefixes(built.model, card.arch)[p]}."
                      in f".{n.removeprefix('base_model.model.')}.")
               for p in ("vision", "projector", "language")}
    info = {
        "weights": built.weights, "base_dtype": built.dtype, "precision": precision,
        "base_params": built.size.total_params, "trainable_params": n_trainable,
        "total_params": n_total, "lr": lr, "adapter_config": prepared.adapter_config,
        "vlm_targets": c.vlm_targets, "vlm_task": c.vlm_task, "train_vision": c.train_vision,
        "adapted_modules": len(names), "trainable_by_part": by_part, "arch": card.arch,
        "dataset": data.source, "train_examples": len(train_rows),
        "heldout_examples": len(held_rows), "device": c.device, "batch_size": c.batch_size,
        "grad_accum": c.grad_accum, "threads": threads, "peak_tflops": peak_tflops,
        "peak_tflops_source": peak_source, "flops_per_token": flops_per_token,
        "measure_s": window.elapsed_s, "measured_steps": len(stats),
        "energy_note": window.energy_note, "adapter_files": saved,
        "adapter_dir": "adapter" if saved else None, "hyper": peft_methods.hyper_dict(c.hyper()),
        "flops_formula": "2N + 2N_path + 2N_trainable + 4*L*d*T + 8*L_path*d*T (N: the VLM)",
    }
    return RunResult(run_id=c.run_id, status="ok", metrics=tuple(metrics), info=info)
