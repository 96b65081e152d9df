"""Decode speed of every weight-quantization backend x bit-width against bf16, side by side in
one process on one GPU (issue 15's targets: 7B shape, batch 1 and 16).

For the qwen2.5-7b shape with random weights (speed does not depend on their values; the
build is the one docs/benchmarks.md run D used) it measures bf16, then each (backend,
bit-width) of runners.techniques.quantize.FORMATS, every one quantized from the same seeded
weights (lm_head kept in bf16, the runner's default) and decoded on the same engine the
runner uses for quantized models: `fused@none`, the lean decode step uncompiled inside one
captured CUDA graph (falling back as the runner's `engine=auto` does, to `graph`, then
`loop`, with the reason recorded). bf16 is also decoded on `fused` (compiled), the runner's
bf16 default, and backends named by --compiled (gemlite) once more with the lean step
compiled and captured (`fused+compile`, against bf16 on `fused`), which the runner does not
do for quantized models today. (torchao's subclasses failed to compile there on torch 2.11.)

A backend that cannot run here is reported with its reason (not installed, no CUDA, compute
capability, a shape its kernels refuse); any failure is caught, recorded in one line, and
the next case runs. Each case also records the last-position logits' relative error against
bf16's on the same weights (how much that kernel's rounding moves the output).

    python benchmarks/quant_backends.py --out quant_backends.json            # GPU
    python benchmarks/quant_backends.py --smoke --out /tmp/qb.json           # CPU, tiny

Decode tokens/s = batch / TPOT, TPOT = (latency - TTFT) / (new_tokens - 1), median of the
measured requests (benchmarks/bench_decode.py's method). Prints a table; the JSON has all.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_decode import copy_bandwidth, environment  # noqa: E402

from runners.engines.decode import ENGINES, FusedEngine  # noqa: E402
from runners.errors import Unsupported, one_line  # noqa: E402
from runners.models import build as model_mod  # noqa: E402
from runners.models import catalog  # noqa: E402
from runners.techniques import quant_backends  # noqa: E402
from runners.techniques import quantize as quant  # noqa: E402

GB = 1e9
ORDER = (("gemlite", "int4"), ("quanto", "int4"), ("torchao", "int4"),
         ("gemlite", "int8"), ("torchao", "int8"), ("quanto", "int8"),
         ("gemlite", "fp8"), ("torchao", "fp8"), ("bnb", "int4"), ("bnb", "int8"),
         ("quanto", "fp8"))
"""Cases after bf16: 4-bit first (the largest expected gain); bitsandbytes late (LLM.int8()'s
outlier split cannot be captured in a CUDA graph); quanto's fp8 last (its Marlin extension
may compile for minutes on a fresh machine)."""
CHAIN = ("fused@none", "graph", "loop")
"""Engines tried per case on CUDA, as the runner's engine=auto does for quantized models."""


class CompiledFused(FusedEngine):
    """`fused` with its lean step compiled by inductor even when the projections are
    quantized modules (the runner compiles only unquantized, fused steps)."""

    def _allocate(self, batch: int, max_len: int, device: torch.device) -> None:
        super()._allocate(batch, max_len, device)
        self._compiles = device.type == "cuda" and self.mode != "none"


class Bench:
    def __init__(self, out: Path, budget_s: float, device: str, smoke: bool) -> None:
        self.out, self.budget_s, self.device, self.smoke = out, budget_s, device, smoke
        self.start = time.monotonic()
        self.doc: dict[str, Any] = {"cases": []}

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {msg}", flush=True)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.doc, indent=1, default=str))

    def sync(self) -> Callable[[], None] | None:
        return torch.cuda.synchronize if self.device.startswith("cuda") else None


def _engine(name: str, model: Any, new_tokens: int, sync: Callable[[], None] | None) -> Any:
    base, _, mode = name.partition("@")
    if base == "fused+compile":
        return CompiledFused(model, new_tokens, sync, 0, mode=mode or "default")
    if base == "fused":
        return FusedEngine(model, new_tokens, sync, 0, mode=mode or "default")
    return ENGINES[base](model, new_tokens, sync, pad_token_id=0)


def measure(model: Any, name: str, batch: int, prompt: int, new_tokens: int, device: str,
            sync: Callable[[], None] | None, requests: int = 3) -> dict[str, Any]:
    """Prepare engine `name`, one warm-up request, `requests` measured ones."""
    gen = torch.Generator().manual_seed(batch * 1000 + prompt)
    ids = torch.randint(0, 256, (batch, prompt), generator=gen).to(device)
    engine = _engine(name, model, new_tokens, sync)
    t0 = time.perf_counter()
    engine.prepare(ids)
    prepare_s = time.perf_counter() - t0
    engine(ids)
    timings = [engine(ids)[0] for _ in range(requests)]
    tpot = statistics.median((t.latency_s - t.ttft_s) / (new_tokens - 1) for t in timings)
    return {"engine": name, "batch": batch, "decode_tokens_per_s": batch / tpot,
            "tpot_s": tpot, "ttft_s": statistics.median(t.ttft_s for t in timings),
            "prepare_s": prepare_s, "engine_detail": engine.describe()}


def decode_chain(b: Bench, model: Any, batch: int, args: argparse.Namespace,
                 chain: tuple[str, ...]) -> dict[str, Any]:
    """The first engine of `chain` that prepares and runs; why the ones before it did not."""
    passed_over: list[str] = []
    for name in chain:
        try:
            out = measure(model, name, batch, args.prompt, args.new_tokens, b.device, b.sync())
            return {**out, "passed_over": passed_over}
        except Exception as e:  # noqa: BLE001 - the next engine, as engine=auto does
            if not isinstance(e, Unsupported):
                passed_over.append(f"{name}: {type(e).__name__}: {one_line(e)}"[:400])
            else:
                passed_over.append(f"{name}: {one_line(e)}"[:400])
            if b.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    return {"engine": None, "batch": batch, "error": "; ".join(passed_over)}


def build(b: Bench, shape: str) -> model_mod.BuiltModel:
    gc.collect()
    if b.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return model_mod.build(catalog.model_card(shape), torch.bfloat16, b.device, seed=0)


def last_logits(model: Any, device: str) -> torch.Tensor:
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(7)).to(device)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0, -1].float().cpu()


def run_case(b: Bench, args: argparse.Namespace, backend: str | None, bits: str | None,
             reference: dict[str, Any]) -> None:
    label = "bf16" if backend is None else f"{backend} {bits}"
    case: dict[str, Any] = {"case": label, "backend": backend, "bits": bits, "shape": args.shape}
    b.doc["cases"].append(case)
    t_case = time.monotonic()
    try:
        q = None
        if backend is not None:
            assert bits is not None
            q = quant.check_available(quant.QUANTIZATIONS[bits], b.device, backend,
                                      torch.bfloat16)
            case.update(weights=q.weights, group_size=q.group_size,
                        dynamic_activations=q.dynamic_activations)
        if b.left_s() < args.case_s:
            case["skipped"] = f"time budget ({b.left_s():.0f} s left)"
            b.log(f"{label}: skipped ({case['skipped']})")
            return
        built = build(b, args.shape)
        if q is not None:
            t0 = time.perf_counter()
            quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE)
            extension = quant.extension_needed(built.model, b.device)
            if extension:
                quant.build_extension(extension)
            if b.device.startswith("cuda"):
                torch.cuda.synchronize()
            report = quant.kernel_report(built.model, b.device)
            case.update(quantize_s=time.perf_counter() - t0, kernels=report["kernels"],
                        weight_classes=report["weight_classes"], extension=extension)
        case["weight_bytes"] = quant.model_bytes(built.model)
        logits = last_logits(built.model, b.device)
        if q is None:
            reference["logits"] = logits
        elif "logits" in reference:
            ref = reference["logits"]
            case["logits_rel_err_vs_bf16"] = float((logits - ref).norm() / ref.norm())
        chains = [CHAIN if b.device.startswith("cuda") else ("fused@none",)]
        if q is None and b.device.startswith("cuda"):
            chains.append(("fused",))
        if backend in args.compiled.split(",") and b.device.startswith("cuda"):
            chains.append(("fused+compile",))
        case["runs"] = []
        for chain in chains:
            for batch in args.batches:
                if b.left_s() < 15:
                    case["runs"].append({"batch": batch, "skipped": "time budget"})
                    continue
                r = decode_chain(b, built.model, batch, args, chain)
                r["chain"] = chain[0]
                _ratios(b, r, case)
                case["runs"].append(r)
                b.log(f"{label} b{batch} {r.get('engine')}: "
                      f"{r.get('decode_tokens_per_s', 0):.1f} tok/s"
                      + (f" ({r['vs_bf16']:.2f}x bf16)" if r.get("vs_bf16") else "")
                      + (f" ERROR {r['error']}" if r.get("error") else ""))
                b.save()
        del built
    except Unsupported as e:
        case["unsupported"] = str(e).splitlines()[0]
        b.log(f"{label}: unsupported: {case['unsupported']}")
    except Exception as e:  # noqa: BLE001 - one line, and on to the next case
        case["error"] = f"{type(e).__name__}: {one_line(e)}"[:500]
        b.log(f"{label}: FAILED {case['error']}")
    finally:
        case["wall_s"] = time.monotonic() - t_case
        gc.collect()
        if b.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        b.save()


def _ratios(b: Bench, r: dict[str, Any], case: dict[str, Any]) -> None:
    tps = r.get("decode_tokens_per_s")
    bw = b.doc.get("bandwidth_gbps")
    if tps and bw:
        r["roofline_fraction"] = tps / (r["batch"] * bw * GB / case["weight_bytes"])
    if not tps:
        return
    if case["backend"] is None:
        b.doc.setdefault("bf16", {})[f"{r['chain']} b{r['batch']}"] = tps
        return
    base = b.doc.get("bf16", {})
    same = base.get(f"fused@none b{r['batch']}") if r["chain"] != "fused+compile" else \
        base.get(f"fused b{r['batch']}")
    if same:
        r["vs_bf16"] = tps / same


def table(doc: dict[str, Any]) -> str:
    rows = ["| case | batch | engine | tok/s | vs bf16 | roofline | logits err | kernel / reason |",
            "|---|---|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        reason = c.get("unsupported") or c.get("error") or c.get("skipped")
        if reason:
            rows.append(f"| {c['case']} | | | | | | | {reason} |")
            continue
        kernel = "; ".join(f"{k}: {v}" for k, v in (c.get("kernels") or {}).items()) or "cuBLAS"
        err = c.get("logits_rel_err_vs_bf16")
        for r in c.get("runs", []):
            tps, ratio, roof = (r.get("decode_tokens_per_s"), r.get("vs_bf16"),
                                r.get("roofline_fraction"))
            note = r.get("error") or r.get("skipped") or kernel
            if r.get("passed_over"):
                note += " (passed over: " + "; ".join(r["passed_over"]) + ")"
            rows.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                c["case"], r.get("batch"), r.get("engine") or "", f"{tps:.1f}" if tps else "",
                f"{ratio:.2f}x" if ratio else "", f"{100 * roof:.1f}%" if roof else "",
                f"{err:.4f}" if err is not None else "", note))
    return "\n".join(rows)


def quality_section(b: Bench, args: argparse.Namespace, only: set[tuple[str, ...]]) -> None:
    """Perplexity of the real SmolLM2-135M weights on held-out text (whole topics of the
    `pydoc` corpus, at least --quality-tokens of the model's tokens), bf16 and every
    (backend, bit-width) that runs: kernels round differently, so quality is per backend.
    Weights come from the packaged GGUF (converted once into --home)."""
    from runners.data import textstream
    from runners.techniques.quality import perplexity

    card = catalog.model_card(args.quality_model)
    home = Path(args.home)
    rows: list[dict[str, Any]] = []
    b.doc["quality"] = {"model": card.id, "rows": rows}
    tokenizer = None
    for backend, bits in ((None, None), *ORDER):
        if backend is not None and only and (backend, bits) not in only:
            continue
        label = "bf16" if backend is None else f"{backend} {bits}"
        row: dict[str, Any] = {"case": label, "backend": backend, "bits": bits}
        rows.append(row)
        if b.left_s() < 20:
            row["skipped"] = "time budget"
            continue
        t0 = time.monotonic()
        try:
            built = model_mod.load(card, torch.bfloat16, b.device, 0, home=home)
            if tokenizer is None:
                tokenizer = model_mod.tokenizer_for(card, home)
                # held-out whole topics of the pydoc corpus in the model's own tokens (the
                # shipped eval text holds about a thousand of them: too few to tell backends)
                text = textstream.load(textstream.PYDOC, need_tokens=0,
                                       eval_tokens=args.quality_tokens, tokenizer=tokenizer)
                b.doc["quality"].update(heldout_tokens=len(text.heldout), text=text.source)
            if backend is not None:
                q = quant.check_available(quant.QUANTIZATIONS[bits], b.device, backend,
                                          torch.bfloat16)
                quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE)
                extension = quant.extension_needed(built.model, b.device)
                if extension:
                    quant.build_extension(extension)
            row["perplexity"] = perplexity(built.model, text.heldout, b.device, 1024)
            base = rows[0].get("perplexity")
            if backend is not None and base and row["perplexity"]:
                row["vs_bf16"] = row["perplexity"] / base
            del built
        except Unsupported as e:
            row["unsupported"] = str(e).splitlines()[0]
        except Exception as e:  # noqa: BLE001 - one line, and on to the next case
            row["error"] = f"{type(e).__name__}: {one_line(e)}"[:300]
        row["wall_s"] = time.monotonic() - t0
        what = row.get("perplexity") or row.get("unsupported") or row.get("error")
        b.log(f"quality {label}: {what}")
        gc.collect()
        b.save()


def _tuning(call: Callable[..., Any], home: Path) -> Any:
    """Load or keep gemlite's kernel choices in the tool's home (as runs do), so a second
    invocation does not autotune again; a failure is recorded, never raised."""
    try:
        return call("gemlite", home, "cuda:0") if quant_backends.installed("gemlite") else None
    except Exception as e:  # noqa: BLE001 - a cache, not a result
        return f"{type(e).__name__}: {one_line(e)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--shape", default="qwen2.5-7b")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--only", default="", help="comma-separated cases, e.g. gemlite:int4,bnb:int8")
    p.add_argument("--compiled", default="gemlite",
                   help="backends also measured with the lean step compiled (gemlite's matmul "
                        "is a torch.library op inductor keeps; none: skip)")
    p.add_argument("--gemlite-config", default="",
                   help="a gemlite autotune cache to load (e.g. the h100.json gemlite ships): "
                        "its shapes skip autotuning, which takes minutes per case without it")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--case-s", type=float, default=40.0,
                   help="time a case needs; fewer seconds left skips it")
    p.add_argument("--quality-model", default="",
                   help="a real-weights model (e.g. smollm2-135m) whose held-out perplexity is "
                        "measured for bf16 and every backend, after the speed cases; empty: skip")
    p.add_argument("--quality-tokens", type=int, default=8192)
    p.add_argument("--quality-s", type=float, default=90.0,
                   help="seconds kept for the quality pass out of --budget-s (the speed cases "
                        "stop that much earlier)")
    p.add_argument("--sections", default="speed,quality",
                   help="speed (decode at --shape), quality (perplexity of --quality-model)")
    p.add_argument("--home", default=str(Path.home() / ".efficientllm"),
                   help="where a packaged GGUF is converted once (the tool's home)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape: the code paths only")
    args = p.parse_args()
    device = "cpu" if args.smoke else "cuda:0"
    if args.smoke:
        args.shape, args.prompt, args.new_tokens, args.batches = "tiny", 16, 8, "1,2"
    elif not torch.cuda.is_available():
        print("quant_backends: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
        return 2
    args.batches = [int(x) for x in args.batches.split(",")]
    b = Bench(args.out, args.budget_s, device, args.smoke)
    env = environment(device)
    for dist in ("gemlite", "bitsandbytes", "ninja"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    b.doc.update(environment=env, command=" ".join(sys.argv), shape=args.shape,
                 prompt=args.prompt, new_tokens=args.new_tokens)
    b.log(f"environment: {env}")
    try:
        bw = copy_bandwidth(device, 0.25 if args.smoke else 2.0)
        b.doc["bandwidth_gbps"] = bw["gbps"]
        b.log(f"copy bandwidth {bw['gbps']:.0f} GB/s")
    except Exception as e:  # noqa: BLE001
        b.doc["bandwidth_error"] = one_line(e)
    if args.gemlite_config:
        try:
            import gemlite

            b.doc["gemlite_config_loaded"] = gemlite.load_config(args.gemlite_config)
        except Exception as e:  # noqa: BLE001 - autotuning instead
            b.doc["gemlite_config_error"] = f"{type(e).__name__}: {one_line(e)}"
    only = {tuple(x.split(":")) for x in args.only.split(",") if x}
    sections = set(args.sections.split(","))
    quality = bool(args.quality_model) and "quality" in sections
    home = Path(args.home)
    if not args.smoke:  # gemlite's choices from earlier invocations (the runner's own file)
        b.doc["gemlite_tuning_loaded"] = _tuning(quant_backends.load_tuning, home)
    if "speed" in sections:
        b.budget_s -= args.quality_s if quality else 0.0
        reference: dict[str, Any] = {}
        run_case(b, args, None, None, reference)
        for backend, bits in ORDER:
            if not only or (backend, bits) in only:
                run_case(b, args, backend, bits, reference)
        b.budget_s += args.quality_s if quality else 0.0
    if quality:
        quality_section(b, args, only)
    if not args.smoke:
        b.doc["gemlite_tuning_saved"] = str(_tuning(quant_backends.save_tuning, home))
    b.doc["elapsed_s"] = time.monotonic() - b.start
    b.save()
    print(table(b.doc))
    for row in b.doc.get("quality", {}).get("rows", []):
        print(f"quality {row['case']}: ppl {row.get('perplexity')} "
              f"({row.get('vs_bf16') or row.get('unsupported') or row.get('error') or ''})")
    print(f"\nelapsed {b.doc['elapsed_s']:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
