"""Stored runs that the Compare and Study scenes add to the seeded database: pretraining runs
measured on a CPU (loss curves, no energy counter) and a study's runs (tests.unit.report_rows)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from tests.unit.report_rows import build_db

BASE = datetime(2027, 1, 15, 7, 50, tzinfo=UTC)
TRAINING = (
    # run id, technique, tt, al_s, final-loss offset, decay rate
    ("20270115-075000-00b1-tiny-mqa", "mqa", 2.1e-4, 0.052, 0.30, 0.10),
    ("20270115-075500-00b2-tiny-gqa", "gqa", 1.8e-4, 0.061, 0.10, 0.08),
    ("20270115-080000-00b3-tiny-mla", "mla", 1.5e-4, 0.074, 0.00, 0.06),
)
"""Three pretraining runs on `tiny`, on a CPU: TT and AL known, AEC NULL (no energy counter)."""
LORA_RUN = "20270115-074000-0040-qwen2.5-1.5b-lora"
"""The seeded fine-tuning run (scenes.seed_runs): 24 steps of loss."""
STEPS = 40
NO_ENERGY = "no energy counter on this device (CPU without RAPL access)"


def loss_at(step: int, offset: float, rate: float) -> float:
    """The scene's loss curve: from about 6.2 down towards 2 + offset."""
    return 2.0 + offset + 4.2 * math.exp(-rate * step)


def add_training_runs(db: Path) -> list[str]:
    """Store TRAINING in `db` (its ids returned in order)."""
    store = Store(db)
    for i, (run_id, tech, tt, al, offset, rate) in enumerate(TRAINING):
        t0 = BASE + timedelta(minutes=5 * i)
        t0_ns = int(t0.timestamp() * 1e9)
        store.ingest(RunBundle(
            run={"run_id": run_id, "family": "pretraining", "technique": tech, "model": "tiny",
                 "device": "cpu", "status": "ok", "group_name": "attention", "host": "lab",
                 "weights": "random", "simulated": False, "contended": False, "seed": 0,
                 "started_at": t0, "ended_at": t0 + timedelta(seconds=40), "batch_size": 2,
                 "seq_len": 64, "steps": STEPS, "warmup": 0},
            steps=[{"step": k, "phase": "measure", "t_ns": t0_ns + k * 10**9,
                    "latency_s": al, "tokens": 128, "samples": 2,
                    "loss": loss_at(k, offset, rate)} for k in range(STEPS)],
            metrics=[
                {"name": "tt", "value": tt, "unit": "tokens/param/s", "source": "runner"},
                {"name": "al_s", "value": al, "unit": "s", "source": "runner"},
                {"name": "amu", "value": 0.02 + 0.01 * i, "unit": "fraction",
                 "source": "runner"},
                {"name": "aec_w", "value": None, "unit": "W", "source": "runner",
                 "note": NO_ENERGY},
                {"name": "loss", "value": loss_at(STEPS - 1, offset, rate),
                 "unit": "nats/token", "source": "runner"},
            ]))
    return [t[0] for t in TRAINING]


def add_study_runs(db: Path) -> None:
    """Store the report tests' study (tests.unit.report_rows): pretraining on tiny, inference
    on smollm2-135m, a simulated run, a failed run, and a run of another sweep."""
    build_db(db)
