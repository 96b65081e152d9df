"""TUI benchmark: first frame, live streaming cost, input during a burst, a big run history.

Run: `.venv/bin/python benchmarks/bench_tui.py [--stream-s 20] [--runs 10000]
[--samples-per-run 1000] [--skip-big]`. It works in a temporary data dir (never the real
one), starts no profiling daemon, and prints a short table.

(a) Time to first frame: from just before a fresh process starts until the app has rendered
    its first frame, with the headless driver and in a real terminal (a tmux window).
(b) 8 fake GPUs + the host at 10 Hz for `--stream-s` seconds through the real path (feed
    thread -> SamplesArrived -> per-device rings -> throttled redraw): redraws per second
    and the app process's CPU (process CPU time / wall time, so 100% = one core), in a real
    terminal under tmux (where the terminal output is paid for) and headless.
(c) A burst of 10,000 samples handed over at once: the round trip of a key (posted as the
    terminal driver posts it, until its action has run) during the burst, and without one.
(d) Runs screen over 10,000 runs and 10,000,000 samples (built with SQL, as in
    bench_store.py): from the key to the first rows painted on screen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZE = (120, 36)


# --------------------------------------------------------------------------- (a)


def _tmux_session(name: str, *command: str) -> None:
    """Start a detached 120x36 tmux session (retried: a server may still be shutting down)."""
    for attempt in range(5):
        done = subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "36", *command],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return
        time.sleep(0.3 * (attempt + 1))
    raise RuntimeError(f"tmux would not start a session: {done.stderr.strip()}")


_FIRST_FRAME = """
import sys, time
t_start = float(sys.argv[1])
from pathlib import Path
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.live.feed import SyntheticFeed

class FirstFrame(EfficientLLMApp):
    def on_mount(self):  # runs after EfficientLLMApp.on_mount (Textual calls both)
        self.call_after_refresh(self.done)

    def done(self):
        Path(sys.argv[3]).write_text(str(time.time() - t_start))
        self.exit()

home = Path(sys.argv[2])
headless = "--headless" in sys.argv
FirstFrame(home / "efficientllm.duckdb", home, sample_source=SyntheticFeed(2, history_s=5),
           watch_runs=False).run(headless=headless, size=(120, 36) if headless else None)
"""


def _first_frame_once(home: Path, out: Path, tmux: str | None) -> float:
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _FIRST_FRAME, repr(time.time()), str(home), str(out)]
    if tmux is None:
        subprocess.run([*argv, "--headless"], cwd=ROOT, check=True, timeout=60, capture_output=True)
    else:
        # The tmux server runs already, so only the app's own start is timed.
        argv[3] = "$(python3 -c 'import time; print(time.time())')"
        cmd = "cd {} && {}".format(
            ROOT, " ".join(a if a.startswith("$(") else f"'{a}'" for a in argv)
        )
        subprocess.run([tmux, "new-window", "-t", "bench-tui-ff", cmd], check=True)
        end = time.monotonic() + 30
        while not out.exists() and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.05)
    return float(out.read_text())


def first_frame(tmp: Path, repeats: int = 5) -> list[tuple[str, str]]:
    home = tmp / "ff"
    home.mkdir()
    out = tmp / "ff.txt"
    times = [_first_frame_once(home, out, None) for _ in range(repeats)]
    rows = [
        (
            f"(a) first frame, headless (median of {repeats})",
            f"{statistics.median(times) * 1000:.0f} ms (max {max(times) * 1000:.0f})",
        )
    ]
    tmux = shutil.which("tmux")
    if tmux:
        _tmux_session("bench-tui-ff")
        try:
            real = [_first_frame_once(home, out, tmux) for _ in range(repeats)]
        finally:
            subprocess.run([tmux, "kill-session", "-t", "bench-tui-ff"], check=False)
        rows.append(
            (
                f"(a) first frame, real terminal under tmux (median of {repeats})",
                f"{statistics.median(real) * 1000:.0f} ms (max {max(real) * 1000:.0f})",
            )
        )
    return rows


# --------------------------------------------------------------------------- (b)

_STREAM = """
import json, sys, time, psutil
from pathlib import Path
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.live.feed import SyntheticFeed

seconds, warm, out, home = float(sys.argv[1]), 3.0, Path(sys.argv[2]), Path(sys.argv[3])
feed = SyntheticFeed(n_gpus=8, rate_hz=10.0, history_s=60.0, live=True)

class Stream(EfficientLLMApp):
    def on_mount(self):  # runs after EfficientLLMApp.on_mount (Textual calls both)
        self.set_timer(warm, self.begin)

    def begin(self):
        self.p = psutil.Process()
        self.c0, self.t0, self.r0, self.s0 = (sum(self.p.cpu_times()[:2]), time.monotonic(),
                                              self.redraws, self.history.received)
        self.set_timer(seconds, self.end)

    def end(self):
        wall = time.monotonic() - self.t0
        out.write_text(json.dumps({
            "wall_s": wall, "cpu_s": sum(self.p.cpu_times()[:2]) - self.c0,
            "redraws": self.redraws - self.r0, "samples": self.history.received - self.s0}))
        feed.stop()
        self.exit()

Stream(home / "efficientllm.duckdb", home, sample_source=feed, watch_runs=False).run(
    headless="--headless" in sys.argv, size=(120, 36) if "--headless" in sys.argv else None)
"""


def streaming(tmp: Path, seconds: float) -> list[tuple[str, str]]:
    home = tmp / "stream"
    home.mkdir()
    rows = []
    modes = [("headless", ["--headless"])]
    if shutil.which("tmux"):
        modes.insert(0, ("tmux", []))
    for name, extra in modes:
        out = tmp / f"stream-{name}.json"
        argv = [sys.executable, "-c", _STREAM, str(seconds), str(out), str(home), *extra]
        if name == "tmux":
            session = f"bench-tui-stream-{os.getpid()}"
            cmd = "cd {} && {}".format(ROOT, " ".join(f"'{a}'" for a in argv))
            _tmux_session(session, cmd)
            try:
                end = time.monotonic() + seconds + 30
                while not out.exists() and time.monotonic() < end:
                    time.sleep(0.2)
            finally:
                time.sleep(0.5)
                subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        else:
            subprocess.run(argv, cwd=ROOT, check=True, timeout=seconds + 60, capture_output=True)
        data = json.loads(out.read_text())
        wall = data["wall_s"]
        rows.append(
            (
                f"(b) 9 streams x 10 Hz, {wall:.0f} s ({name}): redraws/s",
                f"{data['redraws'] / wall:.1f}",
            )
        )
        rows.append((f"(b) ... samples/s received ({name})", f"{data['samples'] / wall:.0f}"))
        rows.append(
            (f"(b) ... app CPU, % of one core ({name})", f"{100 * data['cpu_s'] / wall:.1f}%")
        )
    return rows


# --------------------------------------------------------------------------- (c)


async def _burst() -> list[tuple[str, str]]:
    from textual import events

    from efficientllm_tui.live.feed import SyntheticFeed
    from efficientllm_tui.tui.app import EfficientLLMApp

    feed = SyntheticFeed(n_gpus=8, rate_hz=10.0, history_s=10.0, live=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = EfficientLLMApp(home / "e.duckdb", home, sample_source=feed, watch_runs=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(1.5)
            screen: Any = app.screen

            async def round_trip() -> float:
                # The key goes in as the terminal driver would post it; done when its action ran.
                before = screen.window_index
                t = time.perf_counter()
                app.post_message(events.Key("w", "w"))
                while screen.window_index == before:
                    await asyncio.sleep(0.0005)
                return time.perf_counter() - t

            quiet = []
            for _ in range(10):
                quiet.append(await round_trip())
                await asyncio.sleep(0.05)
            t_last = app.history.last_t_ns() or time.time_ns()
            burst = [
                feed.sample(f"gpu{k % 8}", t_last + 1_000_000 * (k // 8 + 1)) for k in range(10_000)
            ]
            received = app.history.received
            feed.inject(burst)
            busy = []
            t0 = time.perf_counter()
            while app.history.received < received + 10_000 and time.perf_counter() - t0 < 10:
                busy.append(await round_trip())
            drained = time.perf_counter() - t0
            kept = app.history.received - received
            feed.stop()
    return [
        ("(c) key round trip, steady stream (median)", f"{statistics.median(quiet) * 1000:.1f} ms"),
        (
            "(c) key round trip during a 10,000-sample burst (max)",
            f"{max(busy) * 1000:.1f} ms over {len(busy)} presses" if busy else "burst done first",
        ),
        ("(c) burst absorbed (samples kept / time)", f"{kept:,} in {drained * 1000:.0f} ms"),
    ]


# --------------------------------------------------------------------------- (d)


async def _runs_screen(db: Path) -> float:
    from textual import events
    from textual.widgets import DataTable

    from efficientllm_tui.live.feed import SyntheticFeed
    from efficientllm_tui.tui.app import EfficientLLMApp

    feed = SyntheticFeed(n_gpus=1, history_s=5)
    app = EfficientLLMApp(db, db.parent, sample_source=feed, watch_runs=False, recover=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(1.0)
        # The key goes in as the terminal driver posts it; done when the rows are painted.
        t = time.perf_counter()
        app.post_message(events.Key("3", "3"))
        while True:
            tables = app.screen.query("#runs")
            if tables and tables.first(DataTable).row_count:
                break
            await asyncio.sleep(0.002)
        painted = asyncio.Event()
        app.screen.call_after_refresh(painted.set)
        await painted.wait()
        elapsed = time.perf_counter() - t
        feed.stop()
    return elapsed


def big_history(tmp: Path, n_runs: int, per_run: int) -> list[tuple[str, str]]:
    from bench_store import build_big

    db = tmp / "big" / "efficientllm.duckdb"
    db.parent.mkdir()
    rows = build_big(db, n_runs, per_run)
    times = [asyncio.run(_runs_screen(db)) for _ in range(3)]
    rows.append(
        (
            f"(d) runs screen over {n_runs:,} runs / {n_runs * per_run:,} samples: "
            "key -> first rows painted (median of 3, fresh app each)",
            f"{statistics.median(times) * 1000:.0f} ms (max {max(times) * 1000:.0f})",
        )
    )
    return rows


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-s", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples-per-run", type=int, default=1_000)
    parser.add_argument("--skip-big", action="store_true", help="skip (d)")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["EFFICIENTLLM_HOME"] = str(tmp / "home")
        rows += first_frame(tmp)
        rows += streaming(tmp, args.stream_s)
        rows += asyncio.run(_burst())
        if not args.skip_big:
            rows += big_history(tmp, args.runs, args.samples_per_run)
    load = os.getloadavg()
    rows.append(
        (
            "machine",
            f"{os.cpu_count()} CPUs, load average {load[0]:.2f} "
            f"{load[1]:.2f} {load[2]:.2f} at the end",
        )
    )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
