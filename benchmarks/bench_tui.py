"""TUI benchmark: first frame, live streaming cost, input during a burst, a big run history.

Run: `.venv/bin/python benchmarks/bench_tui.py [--stream-s 20] [--runs 10000]
[--samples-per-run 1000] [--skip-big] [--skip-stream] [--base REV] [--head REV]`. It works
in a temporary data dir (never the real one), starts no profiling daemon, and prints a short
table. `--base REV` measures (a) and (c) at another commit too, side by side in the same run
(the trees take turns); `--head REV` measures a commit instead of the working tree.

(a) Time to first frame of the real entry (`efficientllm tui`): from just before a fresh
    process starts until the app has rendered its first frame, with the headless driver and
    in a real terminal (a tmux window).
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


# The real `efficientllm` entry (cli.main -> commands.tui -> the app) over the data dir of
# EFFICIENTLLM_HOME with its own daemon source and start-up workers; the app class is only
# told to write the time and quit once its first frame is painted.
_FIRST_FRAME = """
import sys, time
t_start = float(sys.argv[1])
from pathlib import Path
import efficientllm_tui.tui.app as app_module

class FirstFrame(app_module.EfficientLLMApp):
    def on_mount(self):  # runs after EfficientLLMApp.on_mount (Textual calls both)
        self.call_after_refresh(self.done)

    def done(self):
        Path(sys.argv[2]).write_text(str(time.time() - t_start))
        self.exit()

    def run(self, **kwargs):
        if "--headless" in sys.argv:
            kwargs.update(headless=True, size=(120, 36))
        return super().run(**kwargs)

app_module.EfficientLLMApp = FirstFrame
from efficientllm_tui import cli
cli.main(["tui"])
"""


def _first_frame_once(tree: Path, home: Path, out: Path, tmux: str | None) -> float:
    """One fresh `efficientllm` process in `tree` over the data dir `home`."""
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _FIRST_FRAME, repr(time.time()), str(out)]
    if tmux is None:
        subprocess.run([*argv, "--headless"], cwd=tree, check=True, timeout=60,
                       capture_output=True, env={**os.environ, "EFFICIENTLLM_HOME": str(home)})
    else:
        # The tmux server runs already, so only the app's own start is timed (from a clock
        # read by `date`, just before the interpreter starts).
        argv[3] = "$(date +%s.%N)"
        cmd = "cd {} && EFFICIENTLLM_HOME='{}' {}".format(
            tree, home, " ".join(a if a.startswith("$(") else f"'{a}'" for a in argv)
        )
        subprocess.run([tmux, "new-window", "-t", "bench-tui-ff", cmd], check=True)
        end = time.monotonic() + 30
        while not out.exists() and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.5)  # let it exit before the next one starts
    return float(out.read_text())


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.0f} ms (max {max(times) * 1000:.0f})"


def first_frame(tmp: Path, trees: dict[str, Path], repeats: int = 5) -> list[tuple[str, str]]:
    """Median and worst first frame of each tree; the trees take turns, so a change in the
    machine's load falls on all of them alike."""
    out = tmp / "ff.txt"
    tmux = shutil.which("tmux")
    modes: list[tuple[str, str | None]] = [("headless", None)]
    if tmux:
        modes.append(("real terminal under tmux", tmux))
        _tmux_session("bench-tui-ff")
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(repeats):
            for mode, driver in modes:
                for name, tree in trees.items():
                    home = tmp / "ff-home" / str(list(trees).index(name))
                    times.setdefault((mode, name), []).append(
                        _first_frame_once(tree, home, out, driver))
    finally:
        if tmux:
            subprocess.run([tmux, "kill-session", "-t", "bench-tui-ff"], check=False)
    return [(f"(a) first frame, {mode} (median of {repeats}){_label(name, trees)}", _ms(t))
            for (mode, name), t in times.items()]


def _label(name: str, trees: dict[str, Path]) -> str:
    return f" [{name}]" if len(trees) > 1 else ""


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

_BURST = """
import asyncio, json, sys, tempfile, time
from pathlib import Path
from textual import events
from efficientllm_tui.live.feed import SyntheticFeed
from efficientllm_tui.tui.app import EfficientLLMApp


async def main():
    feed = SyntheticFeed(n_gpus=8, rate_hz=10.0, history_s=10.0, live=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = EfficientLLMApp(home / "e.duckdb", home, sample_source=feed, watch_runs=False)
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause(1.5)
            screen = app.screen

            async def round_trip():
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
            burst = [feed.sample(f"gpu{k % 8}", t_last + 1_000_000 * (k // 8 + 1))
                     for k in range(10_000)]
            received = app.history.received
            feed.inject(burst)
            busy = []
            t0 = time.perf_counter()
            while app.history.received < received + 10_000 and time.perf_counter() - t0 < 10:
                busy.append(await round_trip())
            drained = time.perf_counter() - t0
            kept = app.history.received - received
            feed.stop()
    print(json.dumps({"quiet": quiet, "busy": busy, "kept": kept, "drained_s": drained}))

asyncio.run(main())
"""


def burst(trees: dict[str, Path], repeats: int = 3) -> list[tuple[str, str]]:
    """Key round trips during a 10,000-sample burst, `repeats` bursts per tree (taking
    turns); the worst press of each burst, and the worst of all."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            done = subprocess.run([sys.executable, "-c", _BURST], cwd=tree, check=True,
                                  timeout=120, capture_output=True, text=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name, runs in results.items():
        label = _label(name, trees)
        quiet = [t for r in runs for t in r["quiet"]]
        worst = [max(r["busy"]) * 1000 for r in runs if r["busy"]]
        presses = sum(len(r["busy"]) for r in runs)
        rows += [
            (f"(c) key round trip, steady stream (median){label}",
             f"{statistics.median(quiet) * 1000:.1f} ms"),
            (f"(c) key round trip during a 10,000-sample burst (worst of each of "
             f"{len(runs)} bursts){label}",
             " / ".join(f"{w:.1f}" for w in worst) + f" ms over {presses} presses"
             if worst else "burst done first"),
            (f"(c) burst absorbed (samples kept / time, worst){label}",
             f"{min(r['kept'] for r in runs):,} in "
             f"{max(r['drained_s'] for r in runs) * 1000:.0f} ms"),
        ]
    return rows


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


def _rev_name(rev: str) -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    return sha if sha.startswith(rev) else f"{rev} = {sha}"


def _export(rev: str, dest: Path) -> Path:
    """The files of commit `rev` in `dest` (git archive: the repository is left as it was).
    Run from there, `python -c` imports that tree's packages before the installed ones."""
    dest.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-s", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples-per-run", type=int, default=1_000)
    parser.add_argument("--skip-big", action="store_true", help="skip (d)")
    parser.add_argument("--skip-stream", action="store_true", help="skip (b)")
    parser.add_argument("--base", metavar="REV",
                        help="also measure (a) and (c) at this commit, side by side")
    parser.add_argument("--head", metavar="REV",
                        help="measure this commit instead of the working tree")
    parser.add_argument("--repeats", type=int, default=5, help="first frames per tree and mode")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["EFFICIENTLLM_HOME"] = str(tmp / "home")
        trees = {"working tree": ROOT}
        if args.head:
            trees = {_rev_name(args.head): _export(args.head, tmp / "head")}
        if args.base:
            trees[_rev_name(args.base)] = _export(args.base, tmp / "base")
        rows += first_frame(tmp, trees, args.repeats)
        if not args.skip_stream:
            rows += streaming(tmp, args.stream_s)
        rows += burst(trees)
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
