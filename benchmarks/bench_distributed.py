"""Tokens/s on one device against N devices, side by side: DDP fine-tuning and pretraining at
the Qwen2.5-0.5B shape, and FSDP2 fine-tuning of the 7B shape (which one 80 GB GPU cannot
hold). Every run goes through the real CLI (`efficientllm run --gpus N`, torchrun inside)
into a private database; the ratio is N-device tokens/s over one device's.

    python benchmarks/bench_distributed.py --gpus 2,8      # on a machine with 8 GPUs
    python benchmarks/bench_distributed.py --smoke         # CPU, gloo, 2 processes, seconds

Targets (issue 19): 2 GPUs >= 1.85x, 8 GPUs >= 7x for DDP at 0.5B; FSDP2 7B fits where one
GPU does not (the one-GPU run ends `oom` or is refused before it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GPU_CASES = [
    # name, technique, model, batch, seq, sharding, extra --set
    ("finetune-0.5b-ddp", "full", "qwen2.5-0.5b", 8, 2048, "ddp", ["save=false"]),
    ("pretrain-0.5b-ddp", "gqa", "qwen2.5-0.5b", 8, 2048, "ddp", ["eval_tokens=0"]),
    ("finetune-7b-fsdp2", "lora", "qwen2.5-7b", 2, 2048, "fsdp2", ["save=false"]),
]
SMOKE_CASES = [
    ("finetune-tiny-ddp", "full", "tiny", 2, 32, "ddp", ["save=false"]),
    ("pretrain-tiny-ddp", "gqa", "tiny", 2, 32, "ddp", ["eval_tokens=0"]),
    ("finetune-tiny-fsdp2", "lora", "tiny", 2, 32, "fsdp2", ["save=false"]),
]


def run(home: Path, case: tuple, world: int, device: str, steps: int, warmup: int) -> dict:
    """One stored run of `case` on `world` devices: its status and tokens/s."""
    name, technique, model, batch, seq, sharding, sets = case
    argv = [sys.executable, "-m", "efficientllm_tui.cli", "run", "-m", model, "-t", technique,
            "--device", device, "--steps", str(steps), "--warmup", str(warmup),
            "--batch-size", str(batch), "--seq-len", str(seq), "--json"]
    argv += ["--world-size", str(world)] if world > 1 else []
    for s in [*sets, *( [f"sharding={sharding}"] if world > 1 else [])]:
        argv += ["--set", s]
    env = {**os.environ, "EFFICIENTLLM_HOME": str(home), "EFFICIENTLLM_DISPATCHER_IDLE_S": "1"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT,
                         stdin=subprocess.DEVNULL)
    try:
        doc = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"status": f"refused: {out.stderr.strip()[-120:]}", "tokens_per_s": None}
    return {"status": doc.get("status"), "tokens_per_s": doc["metrics"].get("tokens_per_s"),
            "run_id": doc.get("run_id")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, gloo, 2 procs")
    parser.add_argument("--gpus", default="2", help="device counts to compare, e.g. 2,8")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args()
    worlds = [2] if args.smoke else [int(x) for x in args.gpus.split(",")]
    cases = SMOKE_CASES if args.smoke else GPU_CASES
    device = "cpu" if args.smoke else "cuda:0"
    steps = args.steps or (4 if args.smoke else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    home = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    print(f"{'case':<22}{'1 dev tok/s':>14}" + "".join(f"{f'{n} dev tok/s':>14}{'ratio':>8}"
                                                        for n in worlds))
    try:
        for case in cases:
            one = run(home, case, 1, device, steps, warmup)
            cells = [f"{case[0]:<22}", _tps(one)]
            for n in worlds:
                many = run(home, case, n, device, steps, warmup)
                ratio = (f"{many['tokens_per_s'] / one['tokens_per_s']:.2f}x"
                         if one["tokens_per_s"] and many["tokens_per_s"] else "-")
                cells += [_tps(many), f"{ratio:>8}"]
            print("".join(cells), flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "efficientllm_tui.cli", "daemon", "stop"],
                       capture_output=True, env={**os.environ, "EFFICIENTLLM_HOME": str(home)},
                       cwd=ROOT)
    return 0


def _tps(r: dict) -> str:
    v = r["tokens_per_s"]
    return f"{v:>14,.0f}" if v else f"{str(r['status'])[:13]:>14}"


if __name__ == "__main__":
    sys.exit(main())
