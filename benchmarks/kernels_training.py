"""Training kernels side by side on one GPU, in one process: library kernels against ours.

Measures the bf16 matmul peak (runners.engines.training.matmul_peak_tflops), then:

- steps: pretraining steps of the Qwen2.5-0.5B-shape transformer baseline (gqa) with
  liger-kernel's fused linear cross-entropy and with our chunked torch loss, of Mamba (our
  Triton scan, `recurrence=triton`; the chunked torch scan) and of RWKV (flash-linear-
  attention's RWKV-4 kernel, `recurrence=triton`), each through the pretraining family's
  own code: step time, tokens/s, MFU over the measured peak, peak memory, and each step
  time as a ratio of the transformer's (the issue's target: within 2x).
- loss: the output layer and cross-entropy alone at the same shape (tokens x hidden @
  vocabulary), forward and backward under bf16 autocast: our chunked loss eager, with its
  compiled chunk, liger at our chunk budget, liger at its own default chunk; time, peak
  memory above the inputs, and the loss and gradients against our eager path.
- scan: Mamba's selective scan of one layer, forward and backward: ours (Triton), the
  chunked torch scan, and flash-linear-attention's gated recurrence (`fused_recurrent_gla`)
  with one head per channel (Mamba-1's decay exp(delta_t[d] A[d, n]) depends on both the
  channel and the state, so each channel is its own head, state width 16, value width 1,
  with B, C and the decay expanded to [batch, T, channels, 16]); time, peak memory and
  error against ours.
- nsa: NSA's attention alone (runners.kernels.nsa) at the decoder's NSA head layout of the
  model shape (0.5B: 16 query heads over one K/V head of 64), forward and backward in bf16:
  flash-linear-attention's `parallel_nsa` (the path `nsa` trains on, CUDA) against the torch
  reference (dense masked SDPA, the CPU path), with dense causal SDPA (flash, grouped K/V) at
  the same heads for scale; time, peak memory and error against the reference. The `nsa`
  step case trains the NSA decoder through the family (fla where installed).

Every case runs in try/except and prints one line; the JSON is rewritten after each case.

    python benchmarks/kernels_training.py --out DIR [--only steps,loss,scan,nsa] [--budget-s 480]
    python benchmarks/kernels_training.py --smoke --out DIR   # tiny shapes on the CPU

The libraries are optional (`pip install liger-kernel==0.8.5 fla-core==0.6.0`, the
`kernels` extra); a case whose library is missing is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from runners.engines import training, xent  # noqa: E402
from runners.errors import classify  # noqa: E402
from runners.families.base import RunContext, family_class  # noqa: E402
from runners.models import baselines, catalog  # noqa: E402
from runners.protocol import RunSpec  # noqa: E402
from runners.system import device as dev  # noqa: E402
from runners.system.eventlog import EventLog  # noqa: E402

SECTIONS = ("steps", "loss", "scan", "nsa")
STEP_CASES = (
    # name, technique, params, (warmup, steps) or None for the defaults
    ("transformer+liger_ce", "gqa", {"loss_kernel": "liger"}, None),
    ("transformer+chunked_ce", "gqa", {"loss_kernel": "torch"}, None),
    ("mamba+our_triton_scan", "mamba", {"recurrence": "triton"}, None),
    ("mamba+our_triton_scan,no_ckpt", "mamba", {"recurrence": "triton",
                                                "checkpointing": "false"}, None),
    ("rwkv+fla_wkv", "rwkv", {"recurrence": "triton"}, None),
    ("mamba+torch_scan", "mamba", {"recurrence": "torch"}, (1, 2)),
    ("nsa", "nsa", {}, None),
)
KEEP = ("al_s", "al_p50_s", "tokens_per_s", "mfu", "peak_allocated_gib", "peak_reserved_gib",
        "loss", "total_params")
INFO = ("loss_kernel", "loss_impl", "kernels", "scan", "recurrence", "compile",
        "activation_checkpointing", "flops_per_token", "peak_tflops")

R: dict[str, Any] = {}
OUT = Path(".")


def save() -> None:
    (OUT / "kernels_training.json").write_text(json.dumps(R, indent=1, default=str))


def package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cleanup(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def case(section: str, name: str, fn: Callable[[], dict[str, Any]], device: str) -> None:
    """Run one case, store its row (or its failure) and print one line."""
    t0 = time.monotonic()
    try:
        row = fn()
    except Exception as e:  # noqa: BLE001 - one case's failure must not end the run
        kind, message, _ = classify(e)
        row = {"status": "oom" if kind == "oom" else "failed", "error": message,
               "trace": traceback.format_exc()[-2000:]}
    row.setdefault("status", "ok")
    row["wall_s"] = round(time.monotonic() - t0, 1)
    R.setdefault(section, {})[name] = row
    save()
    cleanup(device)
    shown = {k: row[k] for k in ("al_s", "ms", "tokens_per_s", "mfu", "peak_reserved_gib",
                                 "peak_gib", "vs_transformer", "vs_reference", "rel_err",
                                 "reason", "error")
             if row.get(k) is not None}
    print(f"[{section}] {name}: {row['status']} in {row['wall_s']} s {json.dumps(shown)}",
          flush=True)


# --- steps ----------------------------------------------------------------------------------


def train_case(technique: str, params: dict[str, Any], args: argparse.Namespace,
               device: str, warm_steps: tuple[int, int] | None) -> dict[str, Any]:
    """One pretraining run through the family in this process; an error is a result."""
    warmup, steps = warm_steps or (args.warmup, args.steps)
    spec = RunSpec(run_id=f"kt-{technique}", family="pretraining", technique=technique,
                   model=args.model, device=device, batch_size=args.batch_size,
                   seq_len=args.seq_len, warmup=warmup, steps=steps,
                   params={"eval_tokens": 0, "measure_peak": False, **params})
    family_cls = family_class("pretraining")
    _, card = catalog.resolve("pretraining", technique, args.model)
    config = family_cls.config_type.from_spec(spec, device)
    run_dir = Path(tempfile.mkdtemp(prefix=f"kt-{technique}-"))
    log = EventLog(run_dir / "events.jsonl")
    try:
        family = family_cls(config, card, RunContext(spec, run_dir, run_dir, device, log))
        family.validate()
        result = family.run()
    finally:
        log.close()
    row: dict[str, Any] = {"technique": technique, "params": params, "warmup": warmup,
                           "steps": steps}
    row.update({k: result.metric(k) for k in KEEP})
    row.update({k: result.info.get(k) for k in INFO})
    return row


def run_steps(args: argparse.Namespace, device: str, peak: float | None,
              deadline: float) -> None:
    for name, technique, params, warm_steps in STEP_CASES:
        if args.cases and name not in args.cases:
            continue
        if time.monotonic() > deadline:
            R.setdefault("steps", {})[name] = {"status": "skipped", "reason": "budget spent"}
            print(f"[steps] {name}: skipped (budget spent)", flush=True)
            continue
        full = {**params, **({"peak_tflops": peak} if peak else {})}
        if technique == "nsa":
            full |= {"nsa_block": args.nsa_block, "nsa_blocks": args.nsa_blocks,
                     "nsa_window": args.nsa_window}
        case("steps", name, lambda t=technique, p=full, w=warm_steps:
             train_case(t, p, args, device, w), device)
    rows = R.get("steps", {})
    base = next((rows[n]["al_s"] for n in ("transformer+liger_ce", "transformer+chunked_ce")
                 if rows.get(n, {}).get("al_s")), None)
    for row in rows.values():
        if base and row.get("al_s"):
            row["vs_transformer"] = round(row["al_s"] / base, 2)
    R["steps_baseline_al_s"] = base
    save()


# --- loss -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, float | None]:
    """(median ms of `repeats` calls after one warm-up, peak GiB above what was allocated
    before the calls)."""
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 \
        if device.startswith("cuda") else None
    return statistics.median(times), peak


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_loss(args: argparse.Namespace, device: str) -> None:
    card = catalog.model_card(args.model)
    tokens, hidden, vocab = args.batch_size * args.seq_len, card.hidden_size, card.vocab_size
    g = torch.Generator(device="cpu").manual_seed(0)
    h0 = (torch.randn(tokens, hidden, generator=g) * 1.0).to(device)
    w0 = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device)
    y = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    cuda = device.startswith("cuda")
    rows = xent.default_chunk_rows(vocab)
    R["loss_shape"] = {"tokens": tokens, "hidden": hidden, "vocab": vocab,
                       "chunk_rows": rows,
                       "liger_chunk_const": xent.liger_chunk_const(rows, tokens, hidden, vocab)}

    def loss_fn(options: xent.LossOptions | None, liger_default: bool = False
                ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        def go() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = h0.detach().requires_grad_()
            w = w0.detach().requires_grad_()
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
                if liger_default:
                    from liger_kernel.transformers.functional import (
                        liger_fused_linear_cross_entropy,
                    )
                    total = liger_fused_linear_cross_entropy(h, w, y, reduction="sum",
                                                             accum_dtype=torch.float32)
                else:
                    total, _ = xent.chunked_cross_entropy(h, w, y, chunk_rows=rows,
                                                          options=options)
            total.backward()
            return total.detach().float(), h.grad, w.grad
        return go

    liger_ok = xent.liger_installed() and cuda
    variants: list[tuple[str, Callable[..., Any] | None, str | None]] = [
        ("chunked_eager", loss_fn(xent.LossOptions(fp32_gemm=cuda)), None),
        ("chunked_compiled_chunk", loss_fn(xent.LossOptions(compiled=True, fp32_gemm=cuda))
         if cuda else None, None if cuda else "torch.compile of the chunk: CUDA only here"),
        ("liger_same_chunk", loss_fn(xent.LossOptions(kernel="liger")) if liger_ok else None,
         None if liger_ok else "needs CUDA and liger-kernel"),
        ("liger_default_chunk", loss_fn(None, liger_default=True) if liger_ok else None,
         None if liger_ok else "needs CUDA and liger-kernel"),
    ]
    reference: dict[str, torch.Tensor] = {}
    for name, fn, why in variants:
        if args.cases and name not in args.cases:
            continue
        if fn is None:
            R.setdefault("loss", {})[name] = {"status": "skipped", "reason": why}
            print(f"[loss] {name}: skipped ({why})", flush=True)
            continue

        def measure(fn: Callable[[], Any] = fn, name: str = name) -> dict[str, Any]:
            ms, peak = timed(fn, device, args.repeats)
            total, gh, gw = fn()
            out: dict[str, Any] = {"ms": round(ms, 3), "peak_gib": peak,
                                   "loss_per_token": total.item() / tokens}
            if not reference:
                reference.update(total=total, gh=gh.float(), gw=gw.float())
            else:
                out["rel_err"] = {"loss": rel(total, reference["total"]),
                                  "grad_h": rel(gh, reference["gh"]),
                                  "grad_w": rel(gw, reference["gw"])}
            return out
        case("loss", name, measure, device)


# --- scan -----------------------------------------------------------------------------------


def fla_gla_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                 Cm: torch.Tensor) -> torch.Tensor:
    """Mamba-1's selective scan as fla's gated linear recurrence, one head per channel:
    q = C, k = B (expanded over channels), v = delta u, key gate log(decay) = delta A."""
    from fla.ops.gla import fused_recurrent_gla

    b, d, T = u.shape
    n = A.shape[1]
    q = Cm.float()[:, :, None, :].expand(b, T, d, n).contiguous()
    k = Bm.float()[:, :, None, :].expand(b, T, d, n).contiguous()
    v = (delta.float() * u.float()).transpose(1, 2)[..., None].contiguous()
    gk = (delta.float().transpose(1, 2)[..., None] * A.float()).contiguous()
    o, _ = fused_recurrent_gla(q, k, v, gk=gk, scale=1.0)
    return o[..., 0].transpose(1, 2)


def run_scan(args: argparse.Namespace, device: str) -> None:
    from runners.kernels import scan_triton

    b, d, T, n = args.batch_size, args.scan_channels, args.seq_len, 16
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, d, T, generator=g),
              torch.rand(b, d, T, generator=g) * 0.1 + 0.001,
              -torch.rand(d, n, generator=g) * 4 - 0.5,
              torch.randn(b, T, n, generator=g), torch.randn(b, T, n, generator=g)]
    inputs = [x.to(device) for x in inputs]
    gy = torch.randn(b, d, T, generator=g).to(device)
    R["scan_shape"] = {"batch": b, "channels": d, "seq": T, "state": n}
    cuda = device.startswith("cuda")
    fla_ok = cuda and importlib.util.find_spec("fla") is not None
    variants = [
        ("our_triton", scan_triton.selective_scan_triton if cuda and scan_triton.available()
         else None, "needs CUDA and triton"),
        ("torch_chunked", baselines.selective_scan, None),
        ("fla_gla_per_channel", fla_gla_scan if fla_ok else None, "needs CUDA and fla-core"),
    ]
    reference: dict[str, Any] = {}
    for name, fn, why in variants:
        if args.cases and name not in args.cases:
            continue
        if fn is None:
            R.setdefault("scan", {})[name] = {"status": "skipped", "reason": why}
            print(f"[scan] {name}: skipped ({why})", flush=True)
            continue

        def measure(fn: Callable[..., torch.Tensor] = fn) -> dict[str, Any]:
            def go() -> tuple[torch.Tensor, ...]:
                leaves = [x.detach().requires_grad_() for x in inputs]
                y = fn(*leaves)
                return (y.detach(), *torch.autograd.grad(y, leaves, gy))
            ms, peak = timed(go, device, max(1, args.repeats // 2))
            got = go()
            out: dict[str, Any] = {"ms": round(ms, 3), "peak_gib": peak}
            if not reference:
                reference["out"] = got
            else:
                out["rel_err"] = {k: rel(a, w) for k, a, w in zip(
                    ("y", "u", "delta", "A", "B", "C"), got, reference["out"], strict=True)}
            return out
        case("scan", name, measure, device)


# --- nsa ------------------------------------------------------------------------------------


def run_nsa(args: argparse.Namespace, device: str) -> None:
    from runners.kernels import nsa as nsa_ops

    card = catalog.model_card(args.model)
    kv = max(1, card.num_heads // nsa_ops.FLA_GROUP)
    b, T, hq, d = args.batch_size, args.seq_len, nsa_ops.FLA_GROUP * kv, card.hidden_size \
        // card.num_heads
    shape = nsa_ops.NSAShape(args.nsa_block, args.nsa_blocks, args.nsa_window)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, T, hq, d, generator=g), torch.randn(b, T, kv, d, generator=g),
              torch.randn(b, T, kv, d, generator=g),
              torch.sigmoid(torch.randn(b, T, hq, 3, generator=g))]
    inputs = [x.to(device=device, dtype=dtype) for x in inputs]
    gy = torch.randn(b, T, hq, d, generator=g).to(device=device, dtype=dtype)
    R["nsa_shape"] = {"batch": b, "seq": T, "query_heads": hq, "kv_heads": kv, "head_dim": d,
                      "dtype": str(dtype), **shape._asdict(),
                      "kernel": nsa_ops.describe(cuda)}

    def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              gates: torch.Tensor) -> torch.Tensor:
        from runners.models.decoder_blocks import attend

        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None)
        return y.transpose(1, 2) * gates[..., 1:2]

    fla_ok = cuda and nsa_ops.fla_installed()
    variants = [
        ("torch_reference", lambda *x: nsa_ops.nsa_reference(*x, shape), None),
        ("fla_parallel_nsa", (lambda *x: nsa_ops.nsa_kernel(*x, shape)) if fla_ok else None,
         "needs CUDA and fla-core"),
        ("sdpa_dense_causal", dense, None),
    ]
    reference: dict[str, Any] = {}
    for name, fn, why in variants:
        if args.cases and name not in args.cases:
            continue
        if fn is None:
            R.setdefault("nsa", {})[name] = {"status": "skipped", "reason": why}
            print(f"[nsa] {name}: skipped ({why})", flush=True)
            continue

        def measure(fn: Callable[..., torch.Tensor] = fn, name: str = name) -> dict[str, Any]:
            def go() -> tuple[torch.Tensor, ...]:
                leaves = [x.detach().requires_grad_() for x in inputs]
                y = fn(*leaves)
                return (y.detach(), *torch.autograd.grad(y, leaves, gy))
            ms, peak = timed(go, device, max(1, args.repeats // 2))
            got = go()
            out: dict[str, Any] = {"ms": round(ms, 3), "peak_gib": peak}
            if name == "torch_reference":
                reference["out"] = got
            elif reference and name != "sdpa_dense_causal":
                out["rel_err"] = {k: rel(a, w) for k, a, w in zip(
                    ("y", "q", "k", "v", "gates"), got, reference["out"], strict=True)}
            if reference and "ms" in R.get("nsa", {}).get("torch_reference", {}):
                out["vs_reference"] = round(ms / R["nsa"]["torch_reference"]["ms"], 3)
            return out
        case("nsa", name, measure, device)


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan-channels", type=int, default=1792,
                    help="Mamba inner width of the scan case (expand 2 x the 0.5B's 896)")
    ap.add_argument("--nsa-block", type=int, default=64, help="nsa: tokens per block")
    ap.add_argument("--nsa-blocks", type=int, default=8, help="nsa: blocks chosen per query")
    ap.add_argument("--nsa-window", type=int, default=256, help="nsa: sliding-window tokens")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--cases", default="", help="case names to run (default: all)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="no new step case starts after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args()
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if any(s not in SECTIONS for s in sections):
        ap.error(f"--only takes {', '.join(SECTIONS)}")
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    device = "cuda:0" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.model, args.batch_size, args.seq_len = "tiny", 2, 32
        args.warmup, args.steps, args.repeats, args.scan_channels = 1, 1, 2, 8
        args.nsa_block, args.nsa_blocks, args.nsa_window = 16, 4, 16
    t0 = time.monotonic()
    R["setup"] = {"device": device, "gpu": dev.gpu_name(device), "versions": dev.versions(),
                  "liger-kernel": package("liger-kernel"), "fla-core": package("fla-core"),
                  "triton": package("triton"), "mamba_ssm": package("mamba-ssm"),
                  "model": args.model, "batch_size": args.batch_size,
                  "seq_len": args.seq_len, "warmup": args.warmup, "steps": args.steps,
                  "smoke": args.smoke,
                  "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    peak = training.matmul_peak_tflops(device)
    R["peak_tflops"] = peak
    R["peak_source"] = "runners.engines.training.matmul_peak_tflops" if peak else None
    print(f"device {device} ({R['setup']['gpu']}); liger-kernel {R['setup']['liger-kernel']}, "
          f"fla-core {R['setup']['fla-core']}; bf16 matmul peak "
          f"{fmt(peak, '.0f')} TFLOP/s", flush=True)
    save()
    if "loss" in sections:
        run_loss(args, device)
    if "scan" in sections:
        run_scan(args, device)
    if "nsa" in sections:
        run_nsa(args, device)
    if "steps" in sections:
        run_steps(args, device, peak, t0 + args.budget_s)
    R["total_s"] = round(time.monotonic() - t0, 1)
    save()
    print(f"total {R['total_s']} s; JSON: {OUT / 'kernels_training.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
