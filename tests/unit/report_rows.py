"""Stored runs for the report's tests: two groups, repeats, random weights, a simulated run,
and three workloads, ingested through the store API (RunBundle)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store

UTC = timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11)
STUDY = "study-20270115-paper"
OTHER = "sweep-20270116-other"

UNITS = {"amu": "fraction", "pcu": "fraction", "al_s": "s", "tt": "tokens/param/s",
         "it": "tokens/s", "aec_w": "W", "eval_ppl": "ppl", "loss": "nats/token",
         "mcr": "ratio", "al_p50_s": "s", "al_p90_s": "s", "al_p99_s": "s"}

# pretraining / attention on tiny, random init (weights "random"): gqa three seeds, mqa two,
# mla one. Values picked so medians, spreads and ranks are easy to check by hand.
PRETRAIN: list[tuple[str, str, int, dict[str, float]]] = [
    ("p-gqa-0", "gqa", 0, {"amu": 0.30, "al_s": 0.20, "tt": 10.0, "aec_w": 50.0, "loss": 4.0}),
    ("p-gqa-1", "gqa", 1, {"amu": 0.32, "al_s": 0.26, "tt": 12.0, "aec_w": 54.0, "loss": 4.2}),
    ("p-gqa-2", "gqa", 2, {"amu": 0.31, "al_s": 0.22, "tt": 8.0, "aec_w": 52.0, "loss": 4.4}),
    ("p-mqa-0", "mqa", 0, {"amu": 0.20, "al_s": 0.10, "tt": 20.0, "aec_w": 60.0, "loss": 4.8}),
    ("p-mqa-1", "mqa", 1, {"amu": 0.22, "al_s": 0.14, "tt": 24.0, "aec_w": 64.0, "loss": 5.0}),
    ("p-mla-0", "mla", 0, {"amu": 0.40, "al_s": 0.30, "tt": 6.0, "aec_w": 40.0, "loss": 3.5}),
]

# inference / bit_width on smollm2-135m, real weights, measured on cpu: bf16 twice, fp16, int4.
INFER: list[tuple[str, str, int, dict[str, float]]] = [
    ("i-bf16-0", "bf16", 0, {"amu": 0.50, "al_s": 2.0, "it": 100.0, "mcr": 1.0,
                             "al_p50_s": 1.9, "al_p90_s": 2.2, "al_p99_s": 2.5}),
    ("i-bf16-1", "bf16", 1, {"amu": 0.52, "al_s": 2.4, "it": 90.0, "mcr": 1.0,
                             "al_p50_s": 2.3, "al_p90_s": 2.6, "al_p99_s": 2.9}),
    ("i-fp16-0", "fp16", 0, {"amu": 0.51, "al_s": 1.5, "it": 120.0, "mcr": 0.98,
                             "al_p50_s": 1.4, "al_p90_s": 1.7, "al_p99_s": 1.9}),
    ("i-int4-0", "int4", 0, {"amu": 0.20, "al_s": 3.0, "it": 60.0, "mcr": 3.5,
                             "al_p50_s": 2.9, "al_p90_s": 3.3, "al_p99_s": 3.6}),
]

# The same pair profiled on a simulated GPU: its own workload, never ranked with the above.
SIMULATED = ("i-int8-sim", "int8", 0, {"amu": 0.35, "al_s": 1.0, "it": 150.0, "aec_w": 70.0})


def _bundle(run_id: str, family: str, group: str, model: str, technique: str, seed: int,
            metrics: dict[str, float], **run: Any) -> RunBundle:
    steps = []
    if family == "pretraining":  # a loss curve that ends at the stored loss
        steps = [{"step": i, "phase": "measure", "t_ns": i, "latency_s": 0.1,
                  "loss": metrics["loss"] + (3 - i) * 0.5} for i in range(4)]
    return RunBundle(
        run={"run_id": run_id, "family": family, "technique": technique, "model": model,
             "group_name": group, "device": "cpu", "seed": seed, "batch_size": 2,
             "seq_len": 64, "new_tokens": 8 if family == "inference" else None,
             "steps": 4, "status": "ok", "simulated": False, "contended": False,
             "params": "{}", "created_at": datetime(2027, 1, 15, 8, seed, tzinfo=UTC),
             "started_at": datetime(2027, 1, 15, 8, seed, tzinfo=UTC),
             "ended_at": datetime(2027, 1, 15, 9, seed, tzinfo=UTC), "sweep_id": STUDY, **run},
        steps=steps,
        metrics=[{"name": n, "value": v, "unit": UNITS[n], "source": "runner"}
                 for n, v in metrics.items()])


def build_db(path: Path) -> Store:
    """The study's runs, one failed run of the study, and one run of another sweep."""
    store = Store(path, lock_timeout_s=5)
    for rid, tech, seed, m in PRETRAIN:
        store.ingest(_bundle(rid, "pretraining", "attention", "tiny", tech, seed, m,
                             weights="random"))
    for rid, tech, seed, m in INFER:
        store.ingest(_bundle(rid, "inference", "bit_width", "smollm2-135m", tech, seed, m,
                             weights="real"))
    rid, tech, seed, m = SIMULATED
    sim = _bundle(rid, "inference", "bit_width", "smollm2-135m", tech, seed, m,
                  weights="real", simulated=True)
    sim = RunBundle(run=sim.run, metrics=[{**x, "source": "simulated"} if x["name"] == "amu"
                                          else x for x in sim.metrics])
    store.ingest(sim)
    store.ingest(_bundle("i-fp32-failed", "inference", "bit_width", "smollm2-135m", "fp32", 0,
                         {}, weights="real", status="oom", error_text="out of memory"))
    store.ingest(_bundle("o-bf16-0", "inference", "bit_width", "tiny", "bf16", 0,
                         {"it": 5.0}, weights="random", sweep_id=OTHER))
    return store
