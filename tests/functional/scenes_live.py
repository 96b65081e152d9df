"""Scenes users see mid-interaction, for snapshots at 80x24 and 120x36: a CPU box's
dashboard with a run going, Launch scrolled right, a form field in use, the device list open,
Runs with the cursor on a run.

Like tests.functional.scenes, everything time-dependent is pinned. The CPU box is a fake
host-only feed that reads like psutil (24 GiB of RAM, a runner of 0.4-1.4 GiB).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from textual.pilot import Pilot

from efficientllm_tui.live.feed import SyntheticFeed
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.widgets.devices import DeviceList
from profiling.sample import Sample

from .scenes import ACTIVE_RUN, HISTORY_S, NOW_NS, go, make_active_run, make_app, settle

HOST_TOTAL_BYTES = 24 * 2**30
"""The CPU box's RAM."""
NCPU = 2
"""Cores the CPU box reports (the runner's share is its CPU % over them)."""


class CpuBoxFeed(SyntheticFeed):
    """A host with no GPU, read like psutil: host RAM and CPU, the runner's RSS and CPU.

    The runner's RSS climbs from 0.4 to 1.4 GiB over the history, on a host of 24 GiB
    (about 9 GiB in use); its CPU is 40-80 % summed over 2 cores, the host 45-75 %.
    """

    def __init__(self, history_s: float = HISTORY_S) -> None:
        super().__init__(n_gpus=0, t0_ns=NOW_NS - int(history_s * 1e9), history_s=history_s)

    def sample(self, device: str, t_ns: int) -> Sample:
        t = (t_ns - self.t0_ns) / 1e9
        frac = min(1.0, t / self.history_s)
        return Sample(
            t_ns=t_ns,
            host="box",
            device="cpu",
            source="psutil",
            mem_used_bytes=int((8.6 + frac) * 2**30),
            mem_total_bytes=HOST_TOTAL_BYTES,
            util_pct=60 + 15 * math.sin(t / 7),
            cpu_pct=60 + 20 * math.sin(t / 5),
            rss_bytes=int((0.4 + frac) * 2**30),
        )


def cpu_active_run(home: Path) -> None:
    """The scenes' active run, going on the host's CPU."""
    run_dir = make_active_run(home)
    for name in ("spec.json", "events.jsonl"):
        path = run_dir / name
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace('"cuda:0"', '"cpu"').replace('"gpu0"', '"cpu"'), encoding="utf-8"
        )
    spec = json.loads((run_dir / "spec.json").read_text(encoding="utf-8"))
    assert spec["device"] == "cpu" and spec["run_id"] == ACTIVE_RUN


LIVE_SCENES = (
    "dashboard-cpu",
    "launch-cpu-right",
    "launch-family",
    "launch-form",
    "launch-dropdown",
    "runs-cursor",
)


def live_scene_app(home: Path, name: str) -> tuple[EfficientLLMApp, SyntheticFeed]:
    """An app for scene `name` (see drive_live_scene)."""
    screen = name.split("-")[0]
    feed = CpuBoxFeed() if name.endswith("-cpu") or name.startswith("launch") else None
    if name == "dashboard-cpu":
        home.mkdir(parents=True, exist_ok=True)
        cpu_active_run(home)
    app, feed = make_app(
        home, mode=screen, feed=feed, active=False, seed=screen in ("dashboard", "runs")
    )
    if name == "dashboard-cpu":
        app._watch_runs = app._recover = True  # the run dir made above shows as active
    return app, feed


async def drive_live_scene(app: EfficientLLMApp, pilot: Pilot, name: str) -> None:
    """Drive an app made by live_scene_app to its scene, settled."""
    if name == "dashboard-cpu":  # the runner's share of all cores: pinned, not this machine's
        app.screen._ncpu = NCPU  # type: ignore[attr-defined]
        app.screen.query_one(DeviceList)._ncpu = NCPU
    await settle(app, pilot, active=1 if name == "dashboard-cpu" else 0)
    if name == "launch-cpu-right":  # across the models: the technique column stays
        await go(pilot, *["right"] * 8)
    elif name == "launch-family":  # the qwen2.5 family picked on the technique column
        await go(pilot, "left", "right_square_bracket", "space")
    elif name == "launch-form":  # a field in use: the footer says how to start
        await go(pilot, "space", "f", "tab", "tab", "tab", "tab", "tab", "tab", "tab")
        await go(pilot, *"calibration_tokens=64")
    elif name == "launch-dropdown":
        await go(pilot, "f", "enter")
    elif name == "runs-cursor":
        await go(pilot, "down", "down", "right", "right", "right")
    # the keys may refresh a table (a page of runs, a refit): let it hold still again
    await settle(app, pilot)
