"""Deterministic scenes of the app for Pilot tests, SVG snapshots and the docs screenshots
(tests.functional.screenshots).

Everything time-dependent is pinned: the app clock, the fake sample feed (fixed start, no
live ticks), the stored runs (fixed timestamps).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable
from textual.worker import WorkerState

from efficientllm_tui.live.feed import SyntheticFeed
from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from profiling.sample import Sample

from .scene_runs import LORA_RUN, add_study_runs, add_training_runs

T0_NS = 1_800_000_000_000_000_000
"""Start of the fake feed's history (2027-01-15 08:00 UTC)."""
HISTORY_S = 90.0
NOW_NS = T0_NS + int(HISTORY_S * 1e9)
"""The frozen app clock: the end of the fake history."""
BASE = datetime(2027, 1, 15, 7, 0, tzinfo=UTC)
BACKGROUND = ("samples", "runs", "queue")
INFERENCE = (
    ("fp32", 101.5, 0.315, 0.212, 412.0, 259.8),
    ("bf16", 176.2, 0.182, 0.118, 371.0, 260.1),
    ("fp16", 171.9, 0.186, 0.118, 379.0, 260.0),
)


def run_ids() -> list[str]:
    return [f"20270115-07{i:02d}00-00{i}a-tiny-{t[0]}" for i, t in enumerate(INFERENCE)]


def seed_runs(db: Path) -> list[str]:
    """Three finished tiny inference runs, one OOM, one fine-tuning run, fixed timestamps."""
    store = Store(db)
    ids = run_ids()
    for i, (tech, it, al, amu, aec, ppl) in enumerate(INFERENCE):
        t0 = T0_NS - 3600 * 10**9 + i * 600 * 10**9
        samples = [
            Sample(
                t_ns=t0 + k * 10**8,
                host="lab",
                device="gpu0",
                source="simulated",
                mem_used_bytes=int((6 + 60 * amu + (k % 50) * 0.02) * 2**30),
                mem_total_bytes=81559 * 2**20,
                util_pct=97.0,
                sm_active_pct=40.0 + (k * 7 % 40),
                tensor_active_pct=20.0 + k % 9,
                power_w=aec - 40 + (k * 13 % 80),
                sm_clock_mhz=1980.0,
                temp_c=55.0 + k % 5,
            )
            for k in range(240)
        ]
        steps = [
            {
                "step": k,
                "phase": "measure",
                "t_ns": t0 + k * 10**9,
                "latency_s": al + 0.004 * (k % 4),
                "tokens": 32,
                "samples": 1,
            }
            for k in range(12)
        ]
        metrics = [
            {"name": n, "value": v, "unit": u, "source": "runner"}
            for n, v, u in (
                ("it", it, "tokens/s"),
                ("al_s", al, "s"),
                ("ttft_s", al / 9, "s"),
                ("amu", amu, "fraction"),
                ("amu_gib", amu * 79.6, "GiB"),
                ("pcu", 0.55 + 0.1 * i, "fraction"),
                ("aec_w", aec, "W"),
                ("eval_ppl", ppl, ""),
                ("energy_j", aec * 2.2, "J"),
            )
        ]
        store.ingest(
            RunBundle(
                run={
                    "run_id": ids[i],
                    "family": "inference",
                    "technique": tech,
                    "model": "tiny",
                    "device": "cuda:0",
                    "status": "ok",
                    "group_name": "bit_width",
                    "simulated": True,
                    "weights": "random",
                    "host": "lab",
                    "started_at": BASE + timedelta(minutes=10 * i),
                    "ended_at": BASE + timedelta(minutes=10 * i, seconds=24),
                    "batch_size": 1,
                    "seq_len": 64,
                    "new_tokens": 32,
                    "steps": 12,
                    "warmup": 2,
                },
                samples=samples,
                steps=steps,
                metrics=metrics,
            )
        )
    store.ingest(
        RunBundle(
            run={
                "run_id": "20270115-073000-0030-qwen2.5-7b-fp32",
                "family": "inference",
                "technique": "fp32",
                "model": "qwen2.5-7b",
                "device": "cuda:0",
                "status": "oom",
                "group_name": "bit_width",
                "error_type": "oom",
                "error_text": "CUDA out of memory. Tried to allocate 2.00 GiB (batch 8, seq 2048)",
                "started_at": BASE + timedelta(minutes=30),
                "ended_at": BASE + timedelta(minutes=31),
            }
        )
    )
    store.ingest(
        RunBundle(
            run={
                "run_id": "20270115-074000-0040-qwen2.5-1.5b-lora",
                "family": "finetuning",
                "technique": "lora",
                "model": "qwen2.5-1.5b",
                "device": "cuda:0",
                "status": "ok",
                "group_name": "peft",
                "started_at": BASE + timedelta(minutes=40),
                "ended_at": BASE + timedelta(minutes=44),
            },
            steps=[
                {
                    "step": k,
                    "phase": "train",
                    "t_ns": T0_NS + k * 10**9,
                    "latency_s": 0.41,
                    "samples": 8,
                    "loss": 3.2 - 0.09 * k,
                }
                for k in range(24)
            ],
            metrics=[
                {"name": "st", "value": 1.9e-8, "unit": "samples/param/s", "source": "runner"},
                {"name": "loss", "value": 1.04, "unit": "", "source": "runner"},
                {"name": "al_s", "value": 0.41, "unit": "s", "source": "runner"},
            ],
        )
    )
    return ids


CATALOG = json.loads((Path(__file__).with_name("catalog.json")).read_text(encoding="utf-8"))
"""A pinned copy of the catalog (fp32/bf16/fp16 available), so Launch tests and snapshots do
not change as runners land techniques in data/catalog.json."""

ACTIVE_RUN = "20270115-080020-0001-tiny-bf16"


def make_active_run(home: Path) -> Path:
    """A run dir whose runner is this very process (alive): it shows as active, mid-measure."""
    run_dir = home / "runs" / ACTIVE_RUN
    run_dir.mkdir(parents=True)
    spec = {
        "run_id": ACTIVE_RUN,
        "family": "inference",
        "technique": "bf16",
        "model": "tiny",
        "device": "cuda:0",
        "seed": 0,
        "batch_size": 1,
        "seq_len": 64,
        "new_tokens": 32,
        "steps": 12,
        "warmup": 2,
        "dataset": None,
        "params": {},
        "simulate_gpu": True,
        "created_ns": T0_NS + 20 * 10**9,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    t = T0_NS + 20 * 10**9
    events = [
        {
            "t_ns": t,
            "kind": "started",
            "pid": os.getpid(),
            "host": "lab",
            "device": "cuda:0",
            "versions": {},
            "sample_device": "gpu0",
        },
        {"t_ns": t + 10**9, "kind": "phase", "name": "warmup", "steps": 2},
    ]
    k = 0
    for phase, n in (("warmup", 2), ("measure", 5)):
        if phase == "measure":
            events.append(
                {"t_ns": t + (3 + k) * 10**9, "kind": "phase", "name": "measure", "steps": 12}
            )
        for i in range(n):
            k += 1
            events.append(
                {
                    "t_ns": t + (3 + k) * 10**9,
                    "kind": "step",
                    "step": i,
                    "phase": phase,
                    "latency_s": 0.18,
                    "tokens": 32,
                    "samples": 1,
                    "loss": None,
                }
            )
    (run_dir / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events), encoding="utf-8"
    )
    (run_dir / "runner.pid").write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
    return run_dir


_TEMPLATE: list[Path] = []


def seeded_copy(db: Path) -> None:
    """A copy of a database seeded once per process (seeding costs about a second)."""
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="efficientllm-seed-")) / "seed.duckdb"
        seed_runs(template)
        _TEMPLATE.append(template)
    shutil.copyfile(_TEMPLATE[0], db)


def make_app(
    home: Path,
    *,
    n_gpus: int = 2,
    seed: bool = True,
    active: bool = False,
    feed: SyntheticFeed | None = None,
    mode: str | None = None,
) -> tuple[EfficientLLMApp, SyntheticFeed]:
    """An app over a temp data dir with a frozen clock and a fake, finite sample feed."""
    home.mkdir(parents=True, exist_ok=True)
    db = home / "efficientllm.duckdb"
    if seed:
        seeded_copy(db)
    if active:
        make_active_run(home)
    # Screens other than the dashboard need live data only for the NavBar: keep it short.
    history_s = HISTORY_S if mode in (None, "dashboard") else 5.0
    feed = feed or SyntheticFeed(
        n_gpus=n_gpus, t0_ns=NOW_NS - int(history_s * 1e9), history_s=history_s
    )
    app = EfficientLLMApp(
        db,
        home,
        sample_source=feed,
        clock=lambda: NOW_NS,
        frozen=True,
        watch_runs=active,
        recover=active,
        start_mode=mode,
        catalog=CATALOG,
    )
    return app, feed


async def settle(
    app: EfficientLLMApp, pilot: Pilot, *, timeout_s: float = 30.0, active: int = 0
) -> None:
    """Wait for the fake history to arrive, workers to finish and active runs to show."""
    feed = app.sample_source
    expected = None
    if isinstance(feed, SyntheticFeed):
        expected = (int(feed.history_s * feed.rate_hz) + 1) * len(feed.devices)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        busy = [
            w
            for w in app.workers
            if w.group not in BACKGROUND and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        fed = expected is None or app.history.received >= expected
        runs_ok = len(app.active) >= active and all(r.steps_done for r in app.active.values())
        shown = not getattr(app.screen, "pending", False)  # e.g. a page of runs on its way
        if not busy and fed and runs_ok and shown:
            break
        await pilot.pause(0.02)
    await pilot.pause()
    redraw = getattr(app.screen, "redraw", None)
    if callable(redraw):
        redraw()
    for _ in range(3):  # tables measure new rows when idle: let them
        await pilot.pause()
    # Under load idle comes late, and a measured table lays itself out again afterwards:
    # wait until every table is measured and its columns and size hold still for a while,
    # and so does the rendered screen (whichever widget lays itself out late: a chart sized
    # after its grid, a status line).
    # Held still means for a stretch of wall time, not a count of polls: on two busy cores
    # a few polls can all fall before the next layout pass.
    previous, calm_since = None, None
    while time.monotonic() < end:
        await pilot.pause(0.02)
        tables = list(app.screen.query(DataTable))
        state = (tuple((t.id, t.size, t.virtual_size,
                        tuple(c.content_width for c in t.columns.values())) for t in tables),
                 _rendered(app))
        calm = state == previous and not any(_measuring(t) or _unmeasured(t) for t in tables)
        previous = state
        if not calm:
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= 0.3:
            break
    app.screen.refresh(layout=True)
    await pilot.pause()
    await pilot.pause()


def _rendered(app: EfficientLLMApp) -> list[list[object]]:
    """The screen as the compositor renders it now: every cell's text and style (much
    cheaper than an SVG screenshot, which settle would take many times a scene)."""
    return [list(strip) for strip in app.screen._compositor.render_strips()]


def _unmeasured(table: DataTable) -> bool:
    """An auto-width column narrower than one of its cells: rows were added (a page came in,
    a table re-fitted) and the table has not measured them yet."""
    from rich.text import Text

    for column in table.columns.values():
        if not column.auto_width:
            continue
        for row_key in table.rows:
            cell = table.get_cell(row_key, column.key)
            if isinstance(cell, Text):
                width = cell.cell_len
            else:
                try:
                    width = Text.from_markup(str(cell)).cell_len
                except Exception:  # noqa: BLE001 - not markup: its plain length
                    width = len(str(cell))
            if width > column.content_width:
                return True
    return False


def _measuring(table: DataTable) -> bool:
    """The table has rows or cells it has not measured yet (it does so when idle)."""
    return bool(getattr(table, "_require_update_dimensions", False)
                or getattr(table, "_updated_cells", None))


async def go(pilot: Pilot, *keys: str) -> None:
    """Press keys, then let the app settle."""
    await pilot.press(*keys)
    await settle(pilot.app, pilot)  # type: ignore[arg-type]


SCENES = ("dashboard", "launch", "runs", "detail", "compare", "compare-loss", "study", "sql")
SCENE_MODE = {"detail": "runs", "compare-loss": "compare"}


def scene_app(home: Path, name: str) -> tuple[EfficientLLMApp, SyntheticFeed]:
    """An app that opens on the screen of scene `name` (see to_scene)."""
    app, feed = make_app(home, active=name == "dashboard", mode=SCENE_MODE.get(name, name))
    if name == "runs":
        app.marked.add(run_ids()[1])
    elif name == "compare":
        app.marked.update(run_ids())
    elif name == "compare-loss":  # three CPU pretraining runs and a fine-tuning run
        app.marked.update([*add_training_runs(app.db_path), LORA_RUN])
    elif name == "study":
        add_study_runs(app.db_path)
    return app, feed


async def to_scene(app: EfficientLLMApp, pilot: Pilot, name: str) -> None:
    """Drive an app made by scene_app to its scene, settled."""
    await settle(app, pilot, active=1 if name == "dashboard" else 0)
    if name == "launch":
        await go(pilot, "space", "down", "right", "space")
    elif name == "detail":
        await go(pilot, "down", "down", "down", "enter")
        await settle(app, pilot)
    elif name == "compare":
        await go(pilot, "n")
    elif name == "compare-loss":
        await go(pilot, "l")
    elif name == "study":  # open the first study, its pretraining workload's tables
        await go(pilot, "enter")
        await settle(app, pilot)
        await go(pilot, "down", "down")
    elif name == "sql":
        await go(pilot, "ctrl+r")
        await settle(app, pilot)
