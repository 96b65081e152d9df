"""Decode speed of the inference runner's engines and weight quantizations on a GPU.

Sections (each appends to one JSON document; a failing case records its error and the
others go on; a time budget skips what would not fit):
  bandwidth  device-to-device copy of a large buffer, bytes read + written per second:
             the memory roofline every decode figure is divided by.
  engines    bf16, batch 1, qwen2.5-0.5b and qwen2.5-7b shapes (random weights):
             `eager` (model.generate()) and `graph` (static cache + CUDA graph of one decode
             step), each as decode tokens/s and as a fraction of the roofline (bandwidth /
             weight bytes); the graph's tokens checked against the static eager loop's.
  quant      qwen2.5-1.5b and qwen2.5-7b shapes: bf16, int8 and int4 (optimum-quanto,
             lm_head kept in bf16) at batch 1 and 16 on the graph engine, with the speed-up
             over bf16 and the matmul kernel each quantized weight class runs.
  compile    the `engines` shapes on `compile` (the graph over a torch.compile'd step),
             last because inductor takes tens of seconds a shape.

    python benchmarks/bench_decode.py --out DIR [--budget-s 420] [--only engines,quant]
    python benchmarks/bench_decode.py --dry-run      # CPU, tiny model: the code paths

Decode tokens/s = batch / TPOT, TPOT = (request latency - TTFT) / (new_tokens - 1), the
median over the measured requests (each synchronised at its edges). Prompts are byte ids
(valid in every vocabulary). Prints a table at the end; the JSON has every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runners.engines.decode import ENGINES, CompileEngine, FusedEngine  # noqa: E402
from runners.models import build as model_mod  # noqa: E402
from runners.models import catalog  # noqa: E402
from runners.techniques import quantize as quant  # noqa: E402

GB = 1e9
R: dict[str, Any] = {"cases": []}
OUT = Path(".")
START = time.monotonic()
BUDGET_S = 420.0


def save() -> None:
    (OUT / "bench_decode.json").write_text(json.dumps(R, indent=1, default=str))


def left_s() -> float:
    return BUDGET_S - (time.monotonic() - START)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {msg}", flush=True)


def environment(device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "device": device,
                           "date": time.strftime("%Y-%m-%d")}
    for dist in ("transformers", "optimum-quanto", "triton", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), sms=props.multi_processor_count,
                   memory_gib=props.total_memory / 2**30)
        try:
            out["driver"] = Path("/proc/driver/nvidia/version").read_text().split("\n")[0]
        except OSError:
            out["driver"] = None
    return out


# -- bandwidth --------------------------------------------------------------------------------

def copy_bandwidth(device: str, gib: float = 2.0, reps: int = 20) -> dict[str, Any]:
    """Median device-to-device copy rate over `reps` copies of a `gib` GiB buffer, counting
    the bytes read plus the bytes written."""
    n = int(gib * 2**30) // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    if device.startswith("cuda"):
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    moved = 2 * src.numel() * src.element_size()
    med = statistics.median(times)
    del src, dst
    return {"buffer_gib": gib, "reps": reps, "median_s": med, "gbps": moved / med / GB,
            "best_gbps": moved / min(times) / GB}


# -- one decode measurement -------------------------------------------------------------------

def sync_of(device: str) -> Callable[[], None] | None:
    return (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else None


def decode(model: Any, engine_name: str, batch: int, prompt: int, new_tokens: int,
           device: str, requests: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Prepare `engine_name`, run warm-up and measured requests; TPOT, TTFT, tokens/s."""
    gen = torch.Generator().manual_seed(batch * 1000 + prompt)
    ids = torch.randint(0, 256, (batch, prompt), generator=gen).to(device)
    name, _, mode = engine_name.partition("@")  # compile@<mode>, fused@<mode or none>
    if mode:
        engine = {"compile": CompileEngine, "fused": FusedEngine}[name](
            model, new_tokens, sync_of(device), 0, mode=mode)
    else:
        engine = ENGINES[name](model, new_tokens, sync_of(device), pad_token_id=0)
    t0 = time.perf_counter()
    engine.prepare(ids)
    prepare_s = time.perf_counter() - t0
    for _ in range(warmup):
        engine(ids)
    timings, out = [], None
    for _ in range(requests):
        timing, out = engine(ids)
        timings.append(timing)
    tpots = sorted((t.latency_s - t.ttft_s) / (new_tokens - 1) for t in timings)
    tpot = statistics.median(tpots)
    return {"engine": engine_name, "batch": batch, "prompt": prompt, "new_tokens": new_tokens,
            "prepare_s": prepare_s, "tpot_s": tpot, "tpot_all_s": tpots,
            "ttft_s": statistics.median(t.ttft_s for t in timings),
            "latency_s": statistics.median(t.latency_s for t in timings),
            "decode_tokens_per_s": batch / tpot, "engine_detail": engine.describe(),
            "tokens": out}


def case(section: str, label: str, fn: Callable[[], dict[str, Any]],
         need_s: float = 20.0) -> dict[str, Any] | None:
    """Run one measurement; record its result or its error; skip it past the budget."""
    entry: dict[str, Any] = {"section": section, "case": label}
    if left_s() < need_s:
        entry["skipped"] = f"time budget ({left_s():.0f}s left, needs ~{need_s:.0f}s)"
        log(f"skip {label}: {entry['skipped']}")
        R["cases"].append(entry)
        save()
        return None
    t0 = time.monotonic()
    try:
        result = fn()
        result.pop("tokens", None)
        entry.update(result)
        log(f"{label}: {result.get('decode_tokens_per_s', 0):.1f} tok/s "
            f"(tpot {1e3 * result.get('tpot_s', 0):.3f} ms)")
    except Exception as e:  # noqa: BLE001 - a failed case is a result, the rest go on
        entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        entry["traceback"] = traceback.format_exc()[-4000:]
        log(f"{label}: FAILED {entry['error']}")
    entry["wall_s"] = time.monotonic() - t0
    R["cases"].append(entry)
    save()
    return entry


def build(model_id: str, device: str) -> model_mod.BuiltModel:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    built = model_mod.build(catalog.model_card(model_id), torch.bfloat16, device, seed=0)
    log(f"built {model_id}: {built.size.total_params / 1e9:.2f}B params, "
        f"{built.size.weight_bytes / GB:.2f} GB in {time.perf_counter() - t0:.1f}s")
    return built


def roofline(entry: dict[str, Any] | None, weight_bytes: int, bw_gbps: float | None) -> None:
    if entry is None or "decode_tokens_per_s" not in entry or not bw_gbps:
        return
    steps_per_s = bw_gbps * GB / weight_bytes
    entry["weight_bytes"] = weight_bytes
    entry["roofline_tokens_per_s"] = entry["batch"] * steps_per_s
    entry["roofline_fraction"] = entry["decode_tokens_per_s"] / entry["roofline_tokens_per_s"]
    save()


# -- sections ---------------------------------------------------------------------------------

def engines_section(shapes: list[str], device: str, bw: float | None, engines: list[str],
                    prompt: int, new_tokens: int) -> None:
    for model_id in shapes:
        if left_s() < 30:
            log(f"skip engines on {model_id}: budget")
            continue
        built = build(model_id, device)
        nbytes = quant.model_bytes(built.model)
        static_tokens = None
        for name in engines:
            n = min(new_tokens, 48) if name == "eager" else new_tokens
            need = 100.0 if "autotune" in name else 60.0 if name.startswith(
                ("compile", "fused")) and "@none" not in name else 25.0

            def run(name: str = name, n: int = n, model: Any = built.model) -> dict[str, Any]:
                return decode(model, name, 1, prompt, n, device)

            entry = case("engines", f"{model_id} bf16 b1 {name}", run, need)
            if entry is not None:
                entry.update(model=model_id, technique="bf16")
                roofline(entry, nbytes, bw)
        # Same tokens: the graph replays exactly the static loop's kernels; fused projections
        # and a compiled step round differently in bf16, so their agreement is only recorded.
        if "graph" in engines and left_s() > 30:
            def agree(model: Any = built.model) -> dict[str, Any]:
                a = decode(model, "static", 1, prompt, 32, device, requests=1, warmup=0)
                b = decode(model, "graph", 1, prompt, 32, device, requests=1, warmup=0)
                out = {"graph_tokens_equal_static": bool(torch.equal(a["tokens"], b["tokens"])),
                       "decode_tokens_per_s": b["decode_tokens_per_s"], "tpot_s": b["tpot_s"]}
                if any(e.startswith("fused") for e in engines):
                    f = decode(model, "fused@none", 1, prompt, 32, device, requests=1, warmup=0)
                    same = (f["tokens"] == a["tokens"]).flatten().tolist()
                    out["fused_tokens_agree_static"] = same.index(False) if False in same \
                        else len(same)
                return out
            static_tokens = case("engines", f"{model_id} graph==static tokens", agree, 20)
        del built, static_tokens
        gc.collect()


def quant_section(shapes: list[str], device: str, bw: float | None, techniques: list[str],
                  batches: list[int], prompt: int, new_tokens: int, engines: list[str]) -> None:
    for model_id in shapes:
        base: dict[tuple[str, int], float] = {}
        for tech in techniques:
            if left_s() < 40:
                log(f"skip {model_id} {tech}: budget")
                continue
            try:
                built = build(model_id, device)
                t0 = time.perf_counter()
                report: dict[str, Any] = {}
                if tech != "bf16":
                    q = quant.QUANTIZATIONS[tech]
                    quant.check_available(q, device)
                    quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE)
                    ext = quant.extension_needed(built.model, device)
                    if ext:
                        quant.build_extension(ext)
                    report = quant.kernel_report(built.model, device)
                quantize_s = time.perf_counter() - t0
                nbytes = quant.model_bytes(built.model)
            except Exception as e:  # noqa: BLE001
                R["cases"].append({"section": "quant", "case": f"{model_id} {tech}",
                                   "error": f"{type(e).__name__}: {e}"[:500],
                                   "traceback": traceback.format_exc()[-4000:]})
                save()
                log(f"{model_id} {tech}: FAILED {e}")
                continue
            for engine, batch in [(e, b) for e in engines for b in batches]:
                def run(batch: int = batch, model: Any = built.model,
                        engine: str = engine) -> dict[str, Any]:
                    return decode(model, engine, batch, prompt, new_tokens, device)

                need = 45.0 if engine.startswith("fused") and tech == "bf16" else 25.0
                entry = case("quant", f"{model_id} {tech} b{batch} {engine}", run, need)
                if entry is None:
                    continue
                entry.update(model=model_id, technique=tech, quantize_s=quantize_s,
                             kernels=report.get("kernels"),
                             weight_classes=report.get("weight_classes"))
                roofline(entry, nbytes, bw)
                tps = entry.get("decode_tokens_per_s")
                if tech == "bf16" and tps:
                    base[engine, batch] = tps
                elif tps and (engine, batch) in base:
                    entry["speedup_vs_bf16"] = tps / base[engine, batch]
                save()
            del built
            gc.collect()


# -- table ------------------------------------------------------------------------------------

def table() -> str:
    rows = ["| case | tok/s | TPOT ms | TTFT ms | roofline | vs bf16 | kernels / note |",
            "|---|---|---|---|---|---|---|"]
    for c in R["cases"]:
        if "skipped" in c or "error" in c:
            rows.append(f"| {c['case']} | | | | | | {c.get('skipped') or c.get('error')} |")
            continue
        frac = c.get("roofline_fraction")
        note = ""
        if c.get("kernels"):
            note = "; ".join(f"{k}: {v}" for k, v in c["kernels"].items())
        if "graph_tokens_equal_static" in c:
            note = f"graph tokens == static loop tokens: {c['graph_tokens_equal_static']}"
        detail = c.get("engine_detail") or {}
        if detail.get("compile_s"):
            note = f"compile+capture {detail['compile_s']:.0f}s " + note
        if c.get("section") == "bandwidth":
            rows.append(f"| {c['case']} | {c['gbps']:.0f} GB/s | | | | | median of "
                        f"{c['reps']} copies of {c['buffer_gib']} GiB |")
            continue
        rows.append("| {} | {:.1f} | {:.3f} | {} | {} | {} | {} |".format(
            c["case"], c.get("decode_tokens_per_s", 0), 1e3 * c.get("tpot_s", 0),
            f"{1e3 * c['ttft_s']:.1f}" if c.get("ttft_s") else "",
            f"{100 * frac:.1f}%" if frac else "",
            f"{c['speedup_vs_bf16']:.2f}x" if c.get("speedup_vs_bf16") else "", note))
    return "\n".join(rows)


def main() -> int:
    global OUT, BUDGET_S
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--only", default="bandwidth,engines,quant,compile")
    p.add_argument("--engine-shapes", default="qwen2.5-0.5b,qwen2.5-7b")
    p.add_argument("--engines", default="eager,graph,fused@none,fused",
                   help="engines of the engines section; NAME@MODE picks a torch.compile mode "
                        "(compile@..., fused@... or fused@none)")
    p.add_argument("--compile-modes", default="default",
                   help="torch.compile modes of the compile section, e.g. "
                        "default,max-autotune-no-cudagraphs")
    p.add_argument("--quant-shapes", default="qwen2.5-1.5b,qwen2.5-7b")
    p.add_argument("--techniques", default="bf16,int8,int4")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--quant-engines", default="graph,fused",
                   help="engines each quantization is decoded on (bf16 baseline per engine)")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model: code paths only")
    args = p.parse_args()
    OUT, BUDGET_S = args.out, args.budget_s
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    only = set(args.only.split(","))
    device = "cpu" if args.dry_run else "cuda:0"
    if args.dry_run:
        args.engine_shapes = args.quant_shapes = "tiny"
        args.engines = "eager,loop,static,fused"
        args.quant_engines = "static,fused"
        args.new_tokens, args.prompt, args.batches = 8, 16, "1,2"
    R["environment"] = environment(device)
    R["command"] = " ".join(sys.argv)
    log(f"environment: {R['environment']}")
    bw = None
    if "bandwidth" in only:
        entry = case("bandwidth", "copy bandwidth",
                     lambda: copy_bandwidth(device, 0.25 if args.dry_run else 2.0), 5)
        bw = entry.get("gbps") if entry else None
        R["bandwidth_gbps"] = bw
        log(f"copy bandwidth {bw} GB/s")
    if "engines" in only:
        engines_section(args.engine_shapes.split(","), device, bw, args.engines.split(","),
                        args.prompt, args.new_tokens)
    shapes = args.engine_shapes.split(",")
    compiling = "compile" in only and not args.dry_run
    compiles = [f"compile@{m}" if m != "default" else "compile"
                for m in args.compile_modes.split(",")]
    if compiling:  # the small shape first: it is the one launch overhead dominates
        engines_section(shapes[:1], device, bw, compiles, args.prompt, args.new_tokens)
    if "quant" in only:
        quant_section(args.quant_shapes.split(","), device, bw, args.techniques.split(","),
                      [int(b) for b in args.batches.split(",")], args.prompt, args.new_tokens,
                      args.quant_engines.split(","))
    if compiling:  # last: the least certain and the slowest to set up
        engines_section(shapes[1:], device, bw, compiles, args.prompt, args.new_tokens)
    R["elapsed_s"] = time.monotonic() - START
    save()
    print(table())
    print(f"\ncopy bandwidth {bw} GB/s; elapsed {R['elapsed_s']:.0f}s; "
          f"JSON: {OUT / 'bench_decode.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
