"""Cost of one vision-language shape per inference technique (VQA decode), on a GPU.

For each technique (bf16, int8, int4, fp8 by default) the VLM shape is built with random
weights, the language model quantized the way the runner does it (runners.families.vision:
the vision tower and projector kept in bf16, lm_head excluded, backend `auto`), and VQA
requests of the shipped shapes image set run on the runner's engine
(runners.engines.vision.VisionLoopEngine: the model's multimodal prefill, then an own greedy
loop, the vision encoder timed apart by synchronised hooks). Per technique and batch size:
weight bytes, TTFT, the vision encoder's time and share of TTFT, TPOT, decode tokens/s and
images/s (medians over the measured requests). A failing case records its error and the
others go on. Writes bench_vlm.json and prints a table.

    python benchmarks/bench_vlm.py --out DIR                      # smolvlm-256m, on cuda
    python benchmarks/bench_vlm.py --out DIR --model qwen2-vl-2b --batch 1,8 \\
        --techniques bf16,int8,int4,fp8 --new-tokens 64 --steps 10
    python benchmarks/bench_vlm.py --smoke                        # CPU, tiny-vlm: seconds

The H100 figures belong in docs/benchmarks.md ("Vision-language"), with the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runners.data import images  # noqa: E402
from runners.engines.vision import VisionLoopEngine  # noqa: E402
from runners.families.inference import TECHNIQUES  # noqa: E402
from runners.families.vision import language_excludes  # noqa: E402
from runners.models import build as model_mod  # noqa: E402
from runners.models import catalog, vlm  # noqa: E402
from runners.system import device as dev  # noqa: E402
from runners.techniques import quantize as quant  # noqa: E402


def environment(device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "device": device, "date": time.strftime("%Y-%m-%d")}
    for dist in ("transformers", "optimum-quanto", "torchao", "gemlite"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def case(model_id: str, technique: str, batch: int, args: argparse.Namespace,
         device: str) -> dict[str, Any]:
    """One technique x batch size: build, quantize, warm up, measure."""
    card = catalog.model_card(model_id)
    tech = TECHNIQUES[technique]
    compute = tech.compute_dtype("auto", device)
    built = vlm.load(card, compute, device, seed=0)
    out: dict[str, Any] = {"model": model_id, "technique": technique, "batch": batch,
                           "dtype": built.dtype, "params": built.size.total_params}
    if tech.quantization is not None:
        exclude = language_excludes(built.model, card.arch, "lm_head", False)
        q = quant.resolve(tech.quantization, "auto", device, compute)
        quant.quantize(built.model, q, exclude)
        out["backend"] = q.backend
        out["kernels"] = quant.kernel_report(built.model, device).get("kernels")
    out["weight_bytes"] = model_mod.measure(built.model).weight_bytes
    data = images.load(None, Path(args.home) if args.home else None)
    items = images.for_task(data, "vqa")
    pictures = images.open_images(items, data.source)
    prompter = vlm.Prompter(card)
    pad_to = max(len(prompter.ids(images.prompt(i, "vqa"))) for i in items)
    requests = []
    for r in range(args.warmup + args.steps):
        idx = [(r * batch + k) % len(items) for k in range(batch)]
        requests.append(prompter.inputs([pictures[i] for i in idx],
                                        [images.prompt(items[i], "vqa") for i in idx],
                                        device, pad_to))
    engine = VisionLoopEngine(built.model, card.arch, args.new_tokens, dev.sync_fn(device))
    for inputs in requests[:args.warmup]:
        engine(inputs)
    timings = [engine(inputs)[0] for inputs in requests[args.warmup:]]
    engine.close()
    ttft = statistics.median(t.ttft_s for t in timings)
    vision = statistics.median(t.vision_s or 0.0 for t in timings)
    tpot = statistics.median((t.latency_s - t.ttft_s) / max(1, args.new_tokens - 1)
                             for t in timings)
    latency = statistics.median(t.latency_s for t in timings)
    out.update(prompt_tokens=int(requests[0]["input_ids"].shape[1]),
               image_tokens=card.vision.image_tokens if card.vision else None,
               ttft_ms=1e3 * ttft, vision_ms=1e3 * vision, vision_share=vision / ttft,
               tpot_ms=1e3 * tpot, decode_tok_s=batch / tpot if tpot > 0 else None,
               images_per_s=batch / latency)
    del engine, built
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--model", default="smolvlm-256m")
    p.add_argument("--techniques", default="bf16,int8,int4,fp8")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--home", default=None, help="data dir whose cache holds the images")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, tiny-vlm, fp32/int8/int4, batch 2, 8 tokens: the code paths")
    args = p.parse_args(argv)
    if args.smoke:
        device = "cpu"
        args.model, args.techniques, args.batch = "tiny-vlm", "fp32,int8,int4", "2"
        args.new_tokens, args.steps, args.warmup = 8, 3, 1
    else:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dev.set_threads(None)
    result: dict[str, Any] = {"env": environment(device), "cases": []}
    for technique in args.techniques.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            try:
                row = case(args.model, technique, batch, args, device)
            except Exception as e:  # noqa: BLE001 - one failing case must not end the run
                row = {"model": args.model, "technique": technique, "batch": batch,
                       "error": f"{type(e).__name__}: {e}",
                       "trace": traceback.format_exc(limit=3)}
            result["cases"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("trace", "kernels")}),
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_vlm.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"{'technique':9} {'batch':>5} {'MB':>8} {'TTFT ms':>8} {'vision %':>8} "
          f"{'TPOT ms':>8} {'dec tok/s':>9} {'img/s':>7}")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['technique']:9} {r['batch']:>5} error: {r['error'][:60]}")
            continue
        print(f"{r['technique']:9} {r['batch']:>5} {r['weight_bytes'] / 1e6:8.1f} "
              f"{r['ttft_ms']:8.2f} {100 * r['vision_share']:8.1f} {r['tpot_ms']:8.2f} "
              f"{r['decode_tok_s']:9.1f} {r['images_per_s']:7.2f}")
    return 1 if any("error" in r for r in result["cases"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
