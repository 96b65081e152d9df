"""Fine-tuning arms side by side on one GPU: the measured bf16 matmul peak, then full vs the
PEFT arms on the Qwen2.5-0.5B and 1.5B shapes, each through the real runner code
(`runners.families.finetuning`, in process), with tokens/s, MFU, AL, peak memory and loss.

    python benchmarks/bench_finetuning.py --out DIR [--budget-s 230] [--models ...]
    python benchmarks/bench_finetuning.py --smoke      # tiny model on CPU, checks the script

Arms run in priority order (the paper's seven at 0.5B, then the 1.5B comparison, then the
rest; or exactly `--arms`) and an arm is skipped, not cut short, when the time budget would
run out; an arm still running when the budget ends is interrupted. Prints a table last;
writes every number to DIR/bench_finetuning.json. Compares the AL ranking of the paper's
arms with the paper's published 1B-3B ranks. `x full` divides by the `full` arm of the same
model and the same compile mode. `--prebuild-quanto` builds optimum-quanto's CUDA extension
in a background process from the start (4 compile jobs), so that a qlora arm later finds it
built; each row records whether that build was running while the arm ran.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_ARMS = ("full", "freeze", "lora", "lora-plus", "rslora", "dora", "pissa")
PAPER_NAMES = {"full": "Full*", "freeze": "Freeze", "lora": "LoRA", "lora-plus": "LoRA-Plus",
               "rslora": "RSLoRA", "dora": "DoRA", "pissa": "PiSSA"}
BEYOND = ("qlora", "olora", "ia3", "vera", "loha", "lokr", "adalora", "prompt-tuning")


def plan(models: list[tuple[str, int]]) -> list[tuple[str, int, str, dict[str, Any], str]]:
    """(model, micro-batch, technique, extra params, label) in priority order."""
    (small, bs_small), rest = models[0], models[1:]
    arms: list[tuple[str, int, str, dict[str, Any], str]] = []
    order_small = ("full", "lora", "freeze", "dora", "lora-plus", "rslora", "pissa")
    arms += [(small, bs_small, t, {}, t) for t in order_small]
    for big, bs_big in rest:
        arms += [(big, bs_big, t, {}, t) for t in ("full", "lora", "freeze", "dora")]
    arms.append((small, bs_small, "full", {"precision": "bf16-pure"}, "full/bf16-pure"))
    arms += [(small, bs_small, t, {}, t) for t in BEYOND]
    for big, bs_big in rest:
        arms += [(big, bs_big, t, {}, t) for t in ("lora-plus", "rslora", "pissa", "qlora")]
    for big, bs_big in rest:
        arms += [(big, bs_big, t, {}, t) for t in BEYOND if t != "qlora"]
    return arms


def parse_arms(text: str, batches: dict[str, int]
               ) -> list[tuple[str, int, str, dict[str, Any], str]]:
    """`model/technique[/key=value...]` entries, comma-separated, in the order given."""
    from runners.protocol import parse_set

    arms = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        model, technique, *sets = entry.split("/")
        params = dict(parse_set(sets))
        label = technique + "".join(f"/{k}={v}" for k, v in params.items())
        arms.append((model, batches[model], technique, params, label))
    return arms


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("arm ran past its time limit")


def compile_mode(technique: str, params: dict[str, Any], device: str) -> str:
    """The compile mode the runner will use for this arm."""
    from runners.engines.compilation import COMPILE_ALIASES, resolve_compile

    text = str(params.get("compile", "auto")).strip().lower()
    return resolve_compile(COMPILE_ALIASES.get(text, text), device, technique)


def start_quanto_build(out_dir: Path) -> subprocess.Popen[bytes] | None:
    """optimum-quanto's CUDA extension, built in a background process (None if no CUDA)."""
    code = ("import json, time; t = time.monotonic()\n"
            "from optimum.quanto.library.extensions import get_extension, "
            "is_extension_available\n"
            "ok = is_extension_available('quanto_cuda')\n"
            "ok and get_extension('quanto_cuda').lib\n"
            "print('QUANTO_BUILD ' + json.dumps({'available': bool(ok), "
            "'build_s': time.monotonic() - t}), flush=True)\n")
    log = open(out_dir / "quanto_build.log", "wb")  # noqa: SIM115 - the child writes it
    return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MAX_JOBS": "4"})


def run_arm(model: str, batch: int, technique: str, params: dict[str, Any], *, device: str,
            seq_len: int, steps: int, warmup: int, peak: float | None,
            timeout_s: int = 0) -> dict[str, Any]:
    """One arm through the finetuning family, in process; never raises. With `timeout_s`,
    the arm is interrupted (status `timeout`) after that long, and the stacks of every
    thread are printed 3 s before, to show where it was stuck."""
    import torch

    from runners.errors import classify
    from runners.families.base import RunContext
    from runners.families.finetuning import FinetuningConfig, FinetuningFamily
    from runners.models import catalog
    from runners.protocol import RunSpec
    from runners.system import device as dev
    from runners.system.eventlog import EventLog

    all_params = {"save": False, "eval_batches": 1, **params}
    if peak:
        all_params["peak_tflops"] = peak
    spec = RunSpec(run_id=f"bench-{model}-{technique}".replace("/", "-"), family="finetuning",
                   technique=technique, model=model, device=device, seq_len=seq_len,
                   batch_size=batch, steps=steps, warmup=warmup, params=all_params)
    out: dict[str, Any] = {"model": model, "technique": technique, "params": params,
                           "batch_size": batch, "seq_len": seq_len}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        log = EventLog(run_dir / "events.jsonl")
        family = None
        if timeout_s:
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(timeout_s)
            faulthandler.dump_traceback_later(max(1, timeout_s - 3), exit=False)
        try:
            dev.reset_peak_memory(device)
            config = FinetuningConfig.from_spec(spec, device)
            family = FinetuningFamily(config, catalog.model_card(model),
                                      RunContext(spec, run_dir, run_dir, device, log))
            family.validate()
            result = family.run()
            out["status"] = "ok"
            out["metrics"] = {m.name: m.value for m in result.metrics}
            keep = ("precision", "base_dtype", "lr", "flops_per_token", "first_trained_block",
                    "trainable_params", "total_params", "optimizer_fused", "attn_impl",
                    "peak_tflops", "measure_s", "energy_note", "quantization", "compile",
                    "compile_requested", "compile_s", "compile_graphs", "compile_error",
                    "compile_fallback_phase")
            out["info"] = {k: result.info.get(k) for k in keep}
            steps_ev = [json.loads(x) for x in (run_dir / "events.jsonl").read_text()
                        .splitlines() if '"kind":"step"' in x]
            out["losses"] = [e.get("loss") for e in steps_ev]
        except BaseException as exc:  # noqa: BLE001 - every arm ends with a row
            error_type, message, _ = classify(exc)
            if isinstance(exc, TimeoutError):
                error_type, message = "timeout", f"no result within {timeout_s}s"
            out["status"] = error_type
            out["error"] = message
            if error_type == "crash":
                out["traceback"] = traceback.format_exc()[-3000:]
            out["memory"] = dev.memory_facts(device)
            if family is not None:
                out["failure_info"] = dict(family.failure_info())
        finally:
            if timeout_s:
                signal.alarm(0)
                faulthandler.cancel_dump_traceback_later()
            log.close()
            family = None
    out["wall_s"] = time.monotonic() - t0
    import torch._dynamo

    torch._dynamo.reset()  # the next arm's model shares no graph with this one
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def paper_ranks() -> dict[str, int]:
    data = json.loads((ROOT / "data" / "efficientllm_ranks.json").read_text())
    return {r["method"]: r["ranks"]["AL"] for r in data["rows"]
            if r["family"] == "finetuning" and r["group"] == "1B-3B"}


def al_ranking(rows: list[dict[str, Any]], model: str) -> list[tuple[str, float, int | None]]:
    """Our paper arms at `model`, fastest step first, with the paper's AL rank."""
    paper = paper_ranks()
    ours = [(r["technique"], r["metrics"]["al_s"]) for r in rows
            if r["model"] == model and r["status"] == "ok" and not r["params"]
            and r["technique"] in PAPER_ARMS]
    ours.sort(key=lambda x: x[1])
    return [(t, al, paper.get(PAPER_NAMES[t])) for t, al in ours]


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':14s} {'arm':28s} {'status':11s} {'tok/s':>9s} {'x full':>6s} "
            f"{'mfu':>6s} {'mfu6N':>6s} {'AL s':>7s} {'peakGiB':>7s} {'train%':>7s} "
            f"{'loss':>6s} {'compile':>13s} {'wall':>5s}")
    lines = [head, "-" * len(head)]
    full_tps: dict[tuple[str, str | None], float] = {}
    for r in rows:  # the first ok `full` arm of each model and compile mode, no other params
        if (r["status"] == "ok" and r["technique"] == "full"
                and set(r["params"]) <= {"compile"}):
            full_tps.setdefault((r["model"], r.get("compile_mode")),
                                r["metrics"]["tokens_per_s"])
    for r in rows:
        m = r.get("metrics", {})
        label = r.get("label") or r["technique"]
        tps = m.get("tokens_per_s")
        base = full_tps.get((r["model"], r.get("compile_mode")))
        ratio = tps / base if tps and base else None
        info = r.get("info") or {}
        peak = info.get("peak_tflops")
        total = m.get("total_params")
        mfu6 = tps * 6 * total / (peak * 1e12) if tps and total and peak else None
        train = 100 * m["trainable_params"] / total if total else None
        mem = m.get("peak_allocated_gib") or (r.get("memory") or {}).get("peak_allocated_gib")
        mode = info.get("compile") or r.get("compile_mode") or "-"
        if info.get("compile_s") is not None:
            mode = f"{mode} {info['compile_s']:.0f}s"
        if info.get("compile_error"):
            mode = "FELL BACK"
        lines.append(
            f"{r['model']:14s} {label:28s} {r['status']:11s} {fmt(tps, '9.0f')} "
            f"{fmt(ratio, '6.2f')} {fmt(m.get('mfu'), '6.1%')} {fmt(mfu6, '6.1%')} "
            f"{fmt(m.get('al_s'), '7.3f')} {fmt(mem, '7.1f')} {fmt(train, '7.2f')} "
            f"{fmt(m.get('loss'), '6.2f')} {mode:>13s} {r['wall_s']:5.0f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--models", default="qwen2.5-0.5b:8,qwen2.5-1.5b:4",
                   help="model:micro-batch, comma-separated; the first is the small one")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=230.0)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--only", default="", help="comma-separated techniques to keep")
    p.add_argument("--arms", default="", help="model/technique[/key=value], comma-separated:"
                   " run exactly these, in this order (batch sizes from --models)")
    p.add_argument("--arm-timeout-s", type=int, default=0,
                   help="interrupt an arm after this long (0: never)")
    p.add_argument("--prebuild-quanto", action="store_true",
                   help="build optimum-quanto's CUDA extension in the background from the start")
    p.add_argument("--smoke", action="store_true", help="tiny on CPU, to check the script")
    args = p.parse_args()
    if args.smoke:
        args.models, args.seq_len, args.steps, args.warmup = "tiny:2,tiny:1", 64, 2, 1
        args.device = "cpu"

    t_start = time.monotonic()
    import torch

    from runners.engines import training

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env: dict[str, Any] = {"torch": torch.__version__}
    for name in ("transformers", "peft", "optimum.quanto"):
        try:
            env[name] = __import__(name, fromlist=["__version__"]).__version__
        except Exception as e:  # noqa: BLE001
            env[name] = f"unavailable: {e}"
    peak = None
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(args.device)
        peaks = [training.matmul_peak_tflops(args.device, reps=20) for _ in range(2)]
        peak = max(p for p in peaks if p)
        env["peak_tflops_runs"] = peaks
    env["peak_tflops"] = peak
    print(f"env: {json.dumps(env)}", flush=True)

    models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models.split(",")]
    arms = parse_arms(args.arms, dict(models)) if args.arms else plan(models)
    if args.only:
        keep = set(args.only.split(","))
        arms = [a for a in arms if a[2] in keep]
    rows: list[dict[str, Any]] = []
    last_cost: dict[tuple[str, bool], float] = {}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    build = start_quanto_build(out_dir) if args.prebuild_quanto else None
    build_reported = False

    def building() -> bool:
        nonlocal build_reported
        if build is None:
            return False
        if build.poll() is None:
            return True
        if not build_reported:
            build_reported = True
            print(f"[{time.monotonic() - t_start:6.1f}s] quanto prebuild ended, "
                  f"rc={build.returncode}", flush=True)
        return False

    for model, batch, technique, params, label in arms:
        elapsed = time.monotonic() - t_start
        mode = compile_mode(technique, params, args.device)
        key = (model, mode != "off")
        seen = [v for k, v in last_cost.items() if k[1] == key[1]]  # same kind, any model
        estimate = 1.3 * last_cost.get(key, max(seen) if seen else 90.0 if key[1] else 15.0)
        if elapsed + estimate > args.budget_s:
            rows.append({"model": model, "technique": technique, "params": params,
                         "label": label, "compile_mode": mode, "status": "skipped",
                         "wall_s": 0.0,
                         "error": f"time budget ({elapsed:.0f}s used, ~{estimate:.0f}s needed)"})
            continue
        params = dict(params)
        timeout_s = int(params.pop("timeout_s", args.arm_timeout_s))  # per-arm override
        left = max(1, int(args.budget_s - elapsed))
        timeout_s = min(timeout_s, left) if timeout_s else left
        build_before = building()
        row = run_arm(model, batch, technique, params, device=args.device,
                      seq_len=args.seq_len, steps=args.steps, warmup=args.warmup, peak=peak,
                      timeout_s=timeout_s)
        row["prebuild_running"] = [build_before, building()]
        if row["status"] == "ok":
            last_cost[key] = max(row["wall_s"], last_cost.get(key, 0.0) * 0.5)
        row["label"] = label
        row["compile_mode"] = mode
        rows.append(row)
        if len(rows) == 2 and all(r["status"] == "crash" for r in rows):
            print("the first two arms crashed; stopping early:\n" + rows[0]["traceback"])
            break
        m, info = row.get("metrics", {}), row.get("info") or {}
        print(f"[{time.monotonic() - t_start:6.1f}s] {model} {label}: {row['status']} "
              f"tok/s={fmt(m.get('tokens_per_s'), '.0f')} mfu={fmt(m.get('mfu'), '.3f')} "
              f"al={fmt(m.get('al_s'), '.3f')} peak={fmt(m.get('peak_allocated_gib'), '.1f')} "
              f"compile={info.get('compile', mode)} compile_s={fmt(info.get('compile_s'), '.0f')}"
              f" graphs={info.get('compile_graphs')} wall={row['wall_s']:.0f}s "
              f"{info.get('compile_error') or ''} {row.get('error', '')}", flush=True)
        (out_dir / "bench_finetuning.json").write_text(
            json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1, default=str))

    if build is not None:
        building()
        text = (out_dir / "quanto_build.log").read_text(errors="replace")
        line = next((x for x in text.splitlines() if x.startswith("QUANTO_BUILD ")), None)
        env["quanto_prebuild"] = (json.loads(line.split(" ", 1)[1]) if line else
                                  {"running": build.poll() is None, "rc": build.returncode,
                                   "tail": text[-1500:]})
        print(f"quanto prebuild: {env['quanto_prebuild']}", flush=True)
    ranking = {model: al_ranking(rows, model) for model, _ in models}
    doc = {"env": env, "args": vars(args), "rows": rows, "al_ranking": ranking,
           "total_s": time.monotonic() - t_start}
    (out_dir / "bench_finetuning.json").write_text(json.dumps(doc, indent=1, default=str))
    for r in rows:
        if r.get("traceback"):
            print(f"--- {r['model']} {r['technique']} crashed:\n{r['traceback']}")
    print()
    print(table(rows))
    for model, ranked in ranking.items():
        print(f"AL ranking at {model} (ours, fastest first; paper 1B-3B AL rank in brackets): "
              + ", ".join(f"{t} {al:.3f}s [{pr}]" for t, al, pr in ranked))
    print(f"peak bf16 matmul: {fmt(peak, '.0f')} TFLOP/s; total {doc['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
