"""Quality next to cost: one model under several inference techniques, each run scored on
the shipped task suite (lm-eval), printed side by side: accuracy per task with its standard
error, the mean `quality`, perplexity, MCR against the run's own uncompressed reference, and
the cost (decode tokens/s, weight bytes) of the same run.

Each technique is a real runner process (`python -m runners RUN_DIR`) on a spec of its own,
in one temporary data dir, so the numbers are exactly what `efficientllm run` would store.
Needs only the runners' dependencies (no database):

    python benchmarks/bench_quality.py --device cpu --items 50 --out quality.json
    python benchmarks/bench_quality.py --device cuda:0 --techniques bf16,int8,int4,fp8

A technique that cannot run on the device is reported with its reason, never aborts the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runners.protocol import EVENTS_FILE, Event, RunSpec  # noqa: E402
from runners.techniques import tasks as suite  # noqa: E402


def run_one(home: Path, model: str, technique: str, device: str, items: int,
            extra: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One runner process; its stored-to-be metrics and the seconds of its windows."""
    run_id = f"quality-{technique}"
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    params = {"quality": "suite", "quality_items": items, "eval_tokens": 512, **extra}
    spec = RunSpec(run_id=run_id, family="inference", technique=technique, model=model,
                   device=device, batch_size=1, seq_len=64, new_tokens=32, steps=8, warmup=2,
                   params=params)
    (run_dir / "spec.json").write_text(spec.to_json())
    t0 = time.monotonic()
    with open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.run([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                              env=dict(os.environ, EFFICIENTLLM_HOME=str(home)),
                              stdout=subprocess.DEVNULL, stderr=err, timeout=timeout_s)
    wall = time.monotonic() - t0
    events = [Event.from_json(x) for x in (run_dir / EVENTS_FILE).read_text().splitlines()]
    result = next((e for e in reversed(events) if e.kind == "result"), None)
    if result is None or result.get("status") != "ok":
        why = (result.get("error") or {}) if result is not None else {}
        tail = (run_dir / "stderr.log").read_text(errors="replace").strip().splitlines()[-1:]
        return {"technique": technique, "status": result.get("status") if result else "crash",
                "reason": why.get("message") if isinstance(why, dict) else str(why) or tail,
                "exit": proc.returncode, "wall_s": wall}
    metrics = {m["name"]: m.get("value") for m in result.get("metrics") or []}
    notes = {m["name"]: m.get("note") for m in result.get("metrics") or [] if m.get("note")}
    windows = {e.get("name"): (e.get("t1_ns") - e.get("t0_ns")) / 1e9
               for e in events if e.kind == "window"}
    info = result.get("info") or {}
    return {"technique": technique, "status": "ok", "exit": proc.returncode, "wall_s": wall,
            "metrics": metrics, "notes": notes, "window_s": windows,
            "quality_tasks": info.get("quality_tasks"), "engine": info.get("engine"),
            "mcr_reference": info.get("mcr_reference"),
            "quantization": (info.get("quantization") or {}).get("kernel")}


def table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table: one line a technique, then per-task accuracies."""
    head = (f"{'technique':10} {'MB':>7} {'tok/s':>8} {'ppl':>7} {'quality':>15} {'MCR':>6} "
            f"{'score s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['technique']:10} {r['status']}: {r.get('reason')}")
            continue
        m = r["metrics"]
        errs = [m.get(f"acc_{t}_stderr") for t in suite.TASKS]
        se = (sum(e * e for e in errs if e is not None) ** 0.5 / len(errs)) if all(
            e is not None for e in errs) else None
        q = m.get("quality")
        lines.append(
            f"{r['technique']:10} {(m.get('weight_bytes') or 0) / 1e6:7.1f} "
            f"{m.get('it') or 0:8.1f} {m.get('eval_ppl') or float('nan'):7.2f} "
            f"{'-' if q is None else f'{q:.3f}'}{'' if se is None else f' ± {se:.3f}':>8} "
            f"{m.get('mcr') or float('nan'):6.2f} {r['window_s'].get('quality', 0):8.1f}")
    lines.append("")
    lines.append(f"{'task':28} " + " ".join(f"{r['technique']:>10}" for r in rows))
    for task in suite.TASKS:
        cells = []
        for r in rows:
            v = (r.get("metrics") or {}).get(f"acc_{task}")
            cells.append(f"{'-' if v is None else f'{v:.3f}':>10}")
        lines.append(f"{task:28} " + " ".join(cells))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--techniques", default="bf16,int8,int4")
    ap.add_argument("--items", type=int, default=50, help="items per suite task")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra runner parameter for every technique (e.g. threads=2)")
    ap.add_argument("--timeout-s", type=float, default=1800)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    extra: dict[str, Any] = {}
    for item in args.sets:
        key, _, value = item.partition("=")
        extra[key] = int(value) if value.isdigit() else value
    rows = []
    with tempfile.TemporaryDirectory(prefix="ellm-quality-") as tmp:
        for technique in args.techniques.split(","):
            rows.append(run_one(Path(tmp), args.model, technique.strip(), args.device,
                                args.items, extra, args.timeout_s))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "quality_tasks"}),
                  flush=True)
    doc = {"model": args.model, "device": args.device, "items_per_task": args.items,
           "suite_version": suite.SUITE_VERSION, "date": time.strftime("%Y-%m-%d"),
           "runs": rows}
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
