"""Soak: runs of every family back to back through the queue for a bounded time, with the
profiling daemon restarted, the app opened and closed, and socket clients connecting and
vanishing, on a loop. Stops by itself.

What it checks, and prints as one JSON document (and writes to --out):
- every run is stored, with a status, and its stored samples are exactly the samples the
  spool holds for its devices over its span (nothing lost between spool and database);
- the daemon's and the app's resident memory stay flat (first, last and max, per daemon
  life and per app opening);
- no process is left behind at the end (runner, dispatcher, daemon).

    .venv/bin/python benchmarks/soak.py --duration-s 3600 --out soak.json

Traffic goes only to this machine's unix socket; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from efficientllm_tui.runs import dispatcher, queue, rundir, specs  # noqa: E402
from efficientllm_tui.store.db import Store  # noqa: E402
from profiling import home as homes  # noqa: E402
from profiling.daemon import client, spool  # noqa: E402

PAIRS = [("inference", "fp32", {}), ("inference", "int8", {}),
         ("finetuning", "lora", {}), ("pretraining", "gqa", {}), ("inference", "bf16", {})]


def _rss_mib(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20 if pid else None
    except psutil.Error:
        return None


def _churn(home: Path, n: int) -> int:
    """Clients that connect, send half a frame or garbage, and vanish."""
    done = 0
    for i in range(n):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(str(homes.socket_path(home)))
                s.sendall(b'{"op": "status"' if i % 2 else b"\xff\xfe not json\n")
            done += 1
        except OSError:
            pass
    return done


def _open_app(home: Path, env: dict[str, str], seconds: float) -> float | None:
    """The real TUI in a tmux session for `seconds`, then closed; its RSS at the end."""
    if not shutil.which("tmux"):
        return None
    sock = str(home / "soak-tmux.sock")
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "120", "-y", "36", "env",
                    *(f"{k}={v}" for k, v in env.items() if k.startswith("EFFICIENTLLM")),
                    sys.executable, "-m", "efficientllm_tui.cli"], check=True, env=env)
    time.sleep(seconds)
    pids = subprocess.run(["tmux", "-S", sock, "list-panes", "-F", "#{pane_pid}"],
                          capture_output=True, text=True, env=env).stdout.split()
    rss = _rss_mib(int(pids[0])) if pids else None
    subprocess.run(["tmux", "-S", sock, "send-keys", "q"], env=env)
    time.sleep(1.0)
    subprocess.run(["tmux", "-S", sock, "kill-server"], env=env)
    return rss


def _accounted(home: Path, store: Store, run_id: str) -> tuple[int, int]:
    """(samples the spool holds for the run's devices over its span, samples stored)."""
    from efficientllm_tui.runs.ingest import classify

    state = classify(homes.runs_dir(home) / run_id)
    stored = store.samples(run_id)
    devices = set(stored.column("device").to_pylist()) or {"cpu"}
    spooled = spool.read_samples(homes.spool_dir(home), state.t_start_ns, state.t_end_ns,
                                 devices)
    return len(spooled), stored.num_rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--restart-every", type=int, default=4, help="runs between daemon restarts")
    ap.add_argument("--app-every", type=int, default=3, help="runs between app openings")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="efficientllm-soak-"))
    env = {**os.environ, "EFFICIENTLLM_HOME": str(home), "EFFICIENTLLM_DAEMON_IDLE_S": "60",
           "EFFICIENTLLM_DISPATCHER_IDLE_S": "2"}
    os.environ.update(env)
    store = Store(homes.default_db_path(home))
    t_end = time.monotonic() + args.duration_s
    runs: list[str] = []
    daemon_rss: list[dict[str, Any]] = []
    app_rss: list[float] = []
    churned = restarts = 0
    life: dict[str, Any] | None = None
    i = 0
    while time.monotonic() < t_end:
        family, technique, params = PAIRS[i % len(PAIRS)]
        spec = specs.build_spec(model="tiny", technique=technique, family=family, device="cpu",
                                steps=6, warmup=1, params=params)
        queue.enqueue(spec, home, store.path)
        dispatcher.ensure(home)
        runs.append(spec.run_id)
        info = client.ensure_daemon(home, idle_exit_s=60)
        if life is None or life["pid"] != info.pid:
            life = {"pid": info.pid, "rss_mib": []}
            daemon_rss.append(life)
        deadline = time.monotonic() + 300
        while not rundir.ingested_final(homes.runs_dir(home) / spec.run_id):
            if time.monotonic() > deadline:
                break
            churned += _churn(home, 5)
            time.sleep(0.5)
        life["rss_mib"].append(_rss_mib(info.pid))
        i += 1
        if i % args.restart_every == 0:
            client.stop_daemon(home)
            restarts += 1
        if i % args.app_every == 0:
            rss = _open_app(home, env, 4.0)
            if rss is not None:
                app_rss.append(rss)
    # the last runs are stored; then nothing may be left running
    deadline = time.monotonic() + 120
    while queue.snapshot(home) and time.monotonic() < deadline:
        time.sleep(1)
    client.stop_daemon(home)
    deadline = time.monotonic() + 30
    while dispatcher.running_pid(home) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    statuses: dict[str, int] = {}
    mismatched = []
    for run_id in runs:
        row = store.get_run(run_id)
        status = row["status"] if row else "not stored"
        statuses[status] = statuses.get(status, 0) + 1
        if row:
            spooled, stored = _accounted(home, store, run_id)
            if spooled != stored:
                mismatched.append({"run_id": run_id, "spooled": spooled, "stored": stored})
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(str(home) in part for part in (p.info["cmdline"] or []))]
    summary = {
        "duration_s": args.duration_s, "runs": len(runs), "statuses": statuses,
        "daemon_restarts": restarts, "app_openings": len(app_rss),
        "clients_churned": churned,
        "daemon_rss_mib": [{"pid": d["pid"], "first": d["rss_mib"][0], "last": d["rss_mib"][-1],
                            "max": max(x for x in d["rss_mib"] if x is not None)}
                           for d in daemon_rss if d["rss_mib"] and d["rss_mib"][0]],
        "app_rss_mib": {"first": app_rss[0], "last": app_rss[-1], "max": max(app_rss)}
        if app_rss else None,
        "samples_mismatched_runs": mismatched, "processes_left": left, "home": str(home),
    }
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = statuses.get("ok", 0) == len(runs) and not mismatched and not left
    return 0 if ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
