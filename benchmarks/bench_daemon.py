"""Cost and latency of the profiling daemon on this machine.

For each rate, a fresh daemon in a temporary data dir watches a sleeping runner process
(so the host backend reads a process tree every tick) and is measured twice:
  1. sampling only (ring + spool, no subscriber): its CPU % of one core;
  2. with one subscriber: its CPU % and the sample-to-subscriber latency (receive wall
     clock minus the sample's t_ns), p50/p95/p99/max.

    .venv/bin/python benchmarks/bench_daemon.py [--duration 20] [--rates 10,50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiling.daemon import client  # noqa: E402
from profiling.metrics import percentile  # noqa: E402


def cpu_pct(proc: psutil.Process, seconds: float) -> float:
    """CPU % of one core used by `proc` over the next `seconds`."""
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = proc.cpu_times()
    return 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / (time.monotonic() - t0)


def measure(rate_hz: float, duration_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ellm-bench-") as d:
        home = Path(d) / "home"
        runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            info = client.ensure_daemon(home, rate_hz=rate_hz, idle_exit_s=30)
            client.watch(home, runner.pid, "bench")
            proc = psutil.Process(info.pid)
            time.sleep(1.0)  # warm-up: imports done, first tree scan, ring filling
            idle_cpu = cpu_pct(proc, duration_s)

            latencies_ms: list[float] = []
            sub = client.subscribe(home, since_ns=None, timeout_s=5)

            def read() -> None:
                for s in sub:
                    latencies_ms.append((time.time_ns() - s.t_ns) / 1e6)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            time.sleep(0.5)
            n0 = len(latencies_ms)
            sub_cpu = cpu_pct(proc, duration_s)
            received = len(latencies_ms) - n0
            st = client.daemon_status(home) or {}
            sub.close()
            reader.join(5)
            lat = sorted(latencies_ms[n0:])
            return {
                "rate_hz": rate_hz, "cpu_pct_sampling": idle_cpu, "cpu_pct_subscribed": sub_cpu,
                "received": received, "expected": rate_hz * duration_s,
                "lat_p50_ms": percentile(lat, 50) or float("nan"),
                "lat_p95_ms": percentile(lat, 95) or float("nan"),
                "lat_p99_ms": percentile(lat, 99) or float("nan"),
                "lat_max_ms": lat[-1] if lat else float("nan"),
                "overruns": st.get("overruns", -1), "dropped": st.get("frames_dropped", -1),
                "rss_mib": proc.memory_info().rss / 2**20,
            }
        finally:
            try:
                client.stop_daemon(home)
            finally:
                runner.kill()
                runner.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    p.add_argument("--rates", default="10,50", help="comma-separated rates in Hz")
    a = p.parse_args()
    print(f"host {os.uname().nodename}: {psutil.cpu_count()} CPUs, "
          f"{len(psutil.pids())} processes, python {sys.version.split()[0]}")
    print(f"{'rate':>6} {'cpu% samp':>10} {'cpu% +sub':>10} {'recv/exp':>11} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'overrun':>7} "
          f"{'drop':>5} {'rss MiB':>8}")
    for rate in (float(r) for r in a.rates.split(",")):
        r = measure(rate, a.duration)
        print(f"{r['rate_hz']:>5g}  {r['cpu_pct_sampling']:>9.2f}  {r['cpu_pct_subscribed']:>9.2f} "
              f"{r['received']:>5.0f}/{r['expected']:<5.0f} {r['lat_p50_ms']:>7.2f} "
              f"{r['lat_p95_ms']:>7.2f} {r['lat_p99_ms']:>7.2f} {r['lat_max_ms']:>7.2f} "
              f"{r['overruns']:>7} {r['dropped']:>5} {r['rss_mib']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
