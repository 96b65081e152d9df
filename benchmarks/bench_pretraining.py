"""Pretraining variants side by side on one GPU, and their rank order against the paper's.

Measures the bf16 matmul peak, then trains each architecture variant at one shape (default:
the Qwen2.5-0.5B shape, batch 8 x 2048) for a few steps through the pretraining family's
own code (in this process, so torch loads once): tokens/s, TT, MFU over the measured peak,
peak memory, AL, energy where NVML has a counter, held-out perplexity. An out-of-memory is a
result. Then, per comparison group and metric, Kendall's tau-b between our rank order and the
paper's published ranks (data/efficientllm_ranks.json).

    python benchmarks/bench_pretraining.py --out DIR [--budget-s 200]
        [--only gqa@eager,gqa,mamba,...] [--compile auto|true|false]
    python benchmarks/bench_pretraining.py --dry-run      # tiny on CPU: the code paths

Variants run baseline first (gqa = rope = dense = transformer: one model, measured once),
the attention-free baselines last; --only runs the listed ones in the listed order. A name
with `@eager` or `@compiled` runs that variant with `compile` forced off or on (its own row,
e.g. `gqa@eager` next to `gqa`, for a same-run compile ratio); otherwise `--compile` (default
auto: the decoder variants compile on CUDA). Mamba (the chunked scan with activation
checkpointing where mamba_ssm is absent) runs 1 + 2 steps, RWKV's reference loop one step.
`mamba@triton` and `rwkv@triton` run them with `recurrence=triton` (our Triton kernels for
the scan and the WKV) for the usual warm-up and steps, in rows of their own.
A variant that would start after --budget-s is recorded as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from runners.errors import classify  # noqa: E402
from runners.families.base import RunContext, family_class  # noqa: E402
from runners.families.pretraining_config import measure_matmul_tflops  # noqa: E402
from runners.models import catalog  # noqa: E402
from runners.protocol import RunSpec  # noqa: E402
from runners.system import device as dev  # noqa: E402
from runners.system.eventlog import EventLog  # noqa: E402

ORDER = ("gqa", "mha", "mqa", "mla", "absolute", "learned", "relative", "nope", "moe",
         "pythia", "mamba", "rwkv")
ALIASES = {"gqa": ("rope", "dense", "transformer")}
"""Techniques that build the very same model as another: measured once, reported for all."""
SLOW = {"rwkv"}
"""transformers' reference recurrence (a Python loop over time steps): one step, no eval."""
MEDIUM = {"mamba": (1, 2)}
"""(warm-up, measured) steps of variants seconds a step slower than the decoder."""
COMPILE_SUFFIXES = {"eager": "false", "compiled": "true"}
TRITON_SUFFIX = "triton"
"""`<mamba|rwkv>@triton`: recurrence=triton."""
FALLBACK = {"mamba": (1, 512)}
"""A reduced (batch, seq) tried when the full shape runs out of memory, reported apart."""
PAPER = {
    "attention": {"mqa": "MQA", "gqa": "GQA", "mla": "MLA"},
    "positional_encoding": {"rope": "RoPE", "absolute": "Absolute",
                            "learned": "Learnable Absolute", "relative": "Relate"},
    "moe": {"dense": "Dense Model 1.5B", "moe": "MoE Model 0.5Bx8"},
    "attention_free": {"transformer": "Transformer", "mamba": "Mamba", "pythia": "Pythia",
                       "rwkv": "RWKV"},
}
"""Our technique -> the paper's method in the same group. The paper has no 0.5B dense model:
our dense 0.5B stands in for its nearest dense row (its 1.5B) in the two-item MoE group."""
METRICS = {"performance": ("eval_ppl", False), "AMU": ("peak_reserved_gib", False),
           "AL": ("al_s", False), "TT": ("tt", True), "AEC": ("aec_w", False)}
"""Paper column -> (our metric, higher is better). AMU: torch's peak reserved memory stands
in for the daemon's NVML mean (no daemon runs here)."""
KEEP = ("tokens_per_s", "tt", "mfu", "al_s", "al_p50_s", "al_p90_s", "al_p99_s",
        "peak_allocated_gib", "peak_reserved_gib", "energy_j", "aec_w", "j_per_token",
        "eval_ppl", "loss", "total_params", "active_params", "aux_loss")
INFO = ("matching", "flops_per_token", "flop_params", "loss_impl", "attention_kernel",
        "kernels", "scan", "recurrence", "width", "mla", "moe", "energy_note", "measure_s",
        "epochs", "compile", "activation_checkpointing")

R: dict[str, Any] = {}
OUT = Path(".")


def save() -> None:
    (OUT / "bench_pretraining.json").write_text(json.dumps(R, indent=1, default=str))


def run_variant(technique: str, model: str, device: str, batch: int, seq: int, warmup: int,
                steps: int, params: dict[str, Any]) -> dict[str, Any]:
    """One variant through the pretraining family in this process; an OOM is a result."""
    spec = RunSpec(run_id=f"bench-{technique}", family="pretraining", technique=technique,
                   model=model, device=device, batch_size=batch, seq_len=seq, warmup=warmup,
                   steps=steps, params=params)
    family_cls = family_class("pretraining")
    _, card = catalog.resolve("pretraining", technique, model)
    config = family_cls.config_type.from_spec(spec, device)
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{technique}-"))
    log = EventLog(run_dir / "events.jsonl")
    family = family_cls(config, card, RunContext(spec, run_dir, run_dir, device, log))
    t0 = time.monotonic()
    row: dict[str, Any] = {"technique": technique, "batch_size": batch, "seq_len": seq,
                           "warmup": warmup, "steps": steps}
    try:
        family.validate()
        result = family.run()
        row["status"] = "ok"
        row.update({k: result.metric(k) for k in KEEP})
        row.update({k: result.info.get(k) for k in INFO if result.info.get(k) is not None})
        losses = [json.loads(line).get("loss") for line in
                  (run_dir / "events.jsonl").read_text().splitlines()
                  if '"kind":"step"' in line]
        row["step_losses"] = losses
    except Exception as e:  # noqa: BLE001 - one variant's failure must not end the bench
        error_type, message, _ = classify(e)
        row.update(status="oom" if error_type == "oom" else "failed", error=message)
        row.update(family.failure_info())
        row.update(dict(zip(("peak_allocated_gib", "peak_reserved_gib"),
                            dev.peak_memory_gib(device), strict=True)))
        if error_type != "oom":
            row["trace"] = traceback.format_exc()
    finally:
        log.close()
    row["wall_s"] = round(time.monotonic() - t0, 1)
    del family
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


# --- rank comparison --------------------------------------------------------------------------


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two paired rank lists (ties allowed); None below two items or when
    one side is all ties."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else None


def our_ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """Rank 1 = best; ties share the smaller rank (the store's and the paper's convention)."""
    ordered = sorted(values.values(), reverse=higher_is_better)
    return {k: ordered.index(v) + 1 for k, v in values.items()}


def compare_with_paper(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ranks = json.loads((ROOT / "data" / "efficientllm_ranks.json").read_text())["rows"]
    paper = {(r["group"], r["method"]): r["ranks"] for r in ranks
             if r["family"] == "pretraining"}
    out: dict[str, Any] = {}
    for group, mapping in PAPER.items():
        out[group] = {}
        for column, (metric, higher) in METRICS.items():
            ours = {t: rows[t][metric] for t in mapping
                    if t in rows and rows[t].get("status") == "ok" and rows[t].get(metric)
                    is not None}
            if len(ours) < 2:
                out[group][column] = {"tau": None, "n": len(ours), "why": "fewer than 2 runs"}
                continue
            mine = our_ranks(ours, higher)
            theirs = {t: paper[(group, mapping[t])][column] for t in ours}
            keys = sorted(ours)
            out[group][column] = {
                "tau": kendall_tau_b([mine[k] for k in keys], [theirs[k] for k in keys]),
                "n": len(keys), "ours": mine, "paper": theirs}
    return out


# --- main ---------------------------------------------------------------------------------------


def fmt(v: Any, spec: str) -> str:
    """format(v, spec), or a dash as wide as the spec when there is no value."""
    if v is None:
        return "-".rjust(int(re.match(r"\d*", spec).group() or 0))  # type: ignore[union-attr]
    return format(v, spec)


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (f"{'technique':<14} {'status':<7} {'tok/s':>9} {'TT':>9} {'MFU':>6} {'AL s':>7} "
            f"{'p90 s':>7} {'peak GiB':>9} {'AEC W':>6} {'ppl':>7} {'params M':>9} "
            f"{'compile s':>9}")
    lines = [head, "-" * len(head)]
    for t, r in rows.items():
        if r.get("alias_of"):
            continue
        lines.append(
            f"{t:<14} {r['status']:<7} {fmt(r.get('tokens_per_s'), '9.0f')} "
            f"{fmt(r.get('tt'), '9.2e')} {fmt(r.get('mfu') and 100 * r['mfu'], '5.1f')}% "
            f"{fmt(r.get('al_s'), '7.3f')} {fmt(r.get('al_p90_s'), '7.3f')} "
            f"{fmt(r.get('peak_reserved_gib'), '9.1f')} {fmt(r.get('aec_w'), '6.0f')} "
            f"{fmt(r.get('eval_ppl'), '7.1f')} "
            f"{fmt(r.get('total_params') and r['total_params'] / 1e6, '9.1f')} "
            f"{fmt((r.get('compile') or {}).get('compile_s'), '9.1f')}")
    return "\n".join(lines)


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--eval-tokens", type=int, default=2049)
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--only", default="", help="comma-separated techniques, in this order, "
                    "each optionally @eager or @compiled (default: all)")
    ap.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                    help="the `compile` parameter of variants without a suffix")
    ap.add_argument("--dry-run", action="store_true", help="tiny on CPU: exercise the paths")
    args = ap.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    device = "cuda:0" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if args.dry_run:
        args.model, args.batch_size, args.seq_len, args.steps = "tiny", 2, 64, 2
    t_start = time.monotonic()
    R["setup"] = {"device": device, "gpu": dev.gpu_name(device), "versions": dev.versions(),
                  "model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
                  "warmup": args.warmup, "steps": args.steps, "date_utc": time.strftime(
                      "%Y-%m-%d %H:%M:%S", time.gmtime())}
    peak = None
    if device.startswith("cuda"):
        peak = measure_matmul_tflops(device)
        print(f"measured bf16 matmul peak: {peak:.0f} TFLOP/s", flush=True)
    R["peak_tflops"] = peak
    save()

    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(ORDER)
    for name in chosen:
        base, _, suffix = name.partition("@")
        triton_ok = suffix == TRITON_SUFFIX and base in ("mamba", "rwkv")
        if base not in ORDER or (suffix and suffix not in COMPILE_SUFFIXES and not triton_ok):
            ap.error(f"unknown variant {name!r} (techniques: {', '.join(ORDER)}; suffixes: "
                     f"{', '.join('@' + s for s in COMPILE_SUFFIXES)}, and @{TRITON_SUFFIX} "
                     "for mamba and rwkv)")
    rows: dict[str, dict[str, Any]] = {}
    for name in chosen:
        technique, _, suffix = name.partition("@")
        if time.monotonic() - t_start > args.budget_s:
            rows[name] = {"technique": technique, "status": "skipped",
                          "error": f"budget of {args.budget_s:.0f} s spent"}
            continue
        triton = suffix == TRITON_SUFFIX
        slow = technique in SLOW and not triton
        params: dict[str, Any] = {"eval_tokens": 0 if slow else args.eval_tokens,
                                  "measure_peak": False,
                                  "compile": COMPILE_SUFFIXES.get(suffix, args.compile)}
        if triton:
            params["recurrence"] = "triton"
        if peak:
            params["peak_tflops"] = peak
        warmup, steps = (0, 1) if slow else (args.warmup, args.steps) if triton else \
            MEDIUM.get(technique, (args.warmup, args.steps))
        print(f"== {name} ({args.batch_size} x {args.seq_len}, {warmup}+{steps} steps, "
              f"compile={params['compile']})", flush=True)
        row = run_variant(technique, args.model, device, args.batch_size, args.seq_len, warmup,
                          steps, params)
        row["variant"] = name
        rows[name] = row
        comp = row.get("compile") or {}
        fallback = f" (fallback: {comp['fallback']})" if comp.get("fallback") else ""
        comp_text = (f"compiled in {comp['compile_s']:.0f} s ({comp.get('graphs')} graphs, "
                     f"{comp.get('graph_breaks')} breaks)" if comp.get("enabled") else
                     f"eager{fallback}")
        print(f"   {row['status']} in {row['wall_s']} s: "
              f"{fmt(row.get('tokens_per_s'), '.0f')} tok/s, mfu {fmt(row.get('mfu'), '.3f')}, "
              f"AL {fmt(row.get('al_s'), '.4f')} s, "
              f"peak {fmt(row.get('peak_reserved_gib'), '.1f')} GiB, {comp_text} "
              f"{row.get('error') or ''}", flush=True)
        if row["status"] == "oom" and technique in FALLBACK and \
                time.monotonic() - t_start < args.budget_s:
            b, s = FALLBACK[technique] if not args.dry_run else (1, 16)
            small = run_variant(technique, args.model, device, b, s, 0, 1, params)
            small["reduced_shape"] = True
            rows[f"{name}@{b}x{s}"] = small
            print(f"   fallback {b} x {s}: {small['status']} "
                  f"{fmt(small.get('tokens_per_s'), '.0f')} tok/s", flush=True)
        for alias in ALIASES.get(technique, ()) if not suffix else ():
            rows[alias] = {**row, "technique": alias, "alias_of": technique}
        R["rows"] = rows
        save()

    R["kendall_tau"] = compare_with_paper(rows)
    R["total_s"] = round(time.monotonic() - t_start, 1)
    save()
    print(table(rows))
    print("\nKendall tau-b vs the paper (per group, per metric; n = runs compared):")
    for group, cols in R["kendall_tau"].items():
        cells = ", ".join(f"{c} {fmt(v['tau'], '+.2f')} (n={v['n']})" for c, v in cols.items())
        print(f"  {group:<20} {cells}")
    print(f"total {R['total_s']} s; JSON: {OUT / 'bench_pretraining.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
