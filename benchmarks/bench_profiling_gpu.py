"""What the profiler costs and how far its numbers can be trusted, on a real GPU.

Sections (each writes into one JSON document; a failing section records its error and
the others go on):
  memory    NVML device memory (v2 used, reserved, v1 used, per-process) against
            torch.cuda.memory_reserved, before CUDA starts, with a context, after cuBLAS
            loads, with 8 GiB more, after empty_cache: what the difference is made of.
  costs     per-call cost of each NVML reading, of one device sweep, of a GPM poll and of
            the energy counter; how often instant and averaged power change under load.
  fidelity  a 10 Hz (then 50 Hz) daemon, subscribed: energy counter vs the integral of the
            sampled power over windows of >= 5 s (idle, steady matmul, 50% bursts), GPM
            SM activity per window, sample-to-subscriber latency.
  overhead  a steady bf16 matmul loop with the daemon off, at 10 Hz and at 50 Hz, A/B
            interleaved in rotating order, >= 5 rounds: throughput cost and daemon CPU.

    python benchmarks/bench_profiling_gpu.py --out DIR [--pairs 5] [--seg-s 3]
    python benchmarks/bench_profiling_gpu.py --dry-run     # CPU + simulated GPU: code paths

Reads the GPU the process calls cuda:0 (mapped to its NVML index through
CUDA_VISIBLE_DEVICES). Prints a table at the end; the JSON has every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # its helper modules, however it is started

from profiling_workload import Load  # noqa: E402

from profiling import metrics  # noqa: E402
from profiling.backends.energy import energy_counter, sample_device_for  # noqa: E402
from profiling.daemon import client  # noqa: E402
from profiling.sample import Sample  # noqa: E402
from profiling.window import WindowMeter  # noqa: E402

GIB = 1024**3
MIB = 1024**2
R: dict[str, Any] = {}
OUT: Path = Path(".")


def save() -> None:
    (OUT / "bench_profiling_gpu.json").write_text(json.dumps(R, indent=1, default=str))


def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        R[name] = fn()
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
        R[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        print(R[name]["trace"], flush=True)
    R[name]["section_s"] = round(time.monotonic() - t0, 1)
    save()


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# -- memory -------------------------------------------------------------------------------------

def memory_section(device: str, index: int | None) -> dict[str, Any]:
    from profiling.backends import nvml

    if index is None:
        return {"skipped": "no NVML"}
    b = nvml.NvmlBackend(indices=[index], gpm=False)
    pv = nvml.pynvml  # the benchmark reads v1 and per-process memory for the comparison
    handle = pv.nvmlDeviceGetHandleByIndex(index)

    def snap(label: str) -> dict[str, Any]:
        r = b.read(index)
        v1 = pv.nvmlDeviceGetMemoryInfo(handle)
        mine = None
        for p in pv.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid():
                mine = p.usedGpuMemory
        started = torch.cuda.is_initialized()
        row = {"step": label, "nvml_used_v2": r.mem_used_bytes,
               "nvml_reserved_v2": r.mem_reserved_bytes, "nvml_used_v1": int(v1.used),
               "nvml_total": r.mem_total_bytes, "nvml_process_used": mine,
               "torch_reserved": torch.cuda.memory_reserved(0) if started else 0,
               "torch_allocated": torch.cuda.memory_allocated(0) if started else 0}
        print(f"  {label:<22} v2 used {r.mem_used_bytes / MIB:9.0f} MiB  process "
              f"{(mine or 0) / MIB:8.0f} MiB  torch reserved {row['torch_reserved'] / MIB:8.0f}",
              flush=True)
        return row

    rows = [snap("before CUDA init")]
    torch.zeros(1, device=device)
    torch.cuda.synchronize()
    rows.append(snap("context + 1 tensor"))
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    (a @ a).sum().item()
    rows.append(snap("after first matmul"))
    big = torch.empty(8 * GIB, dtype=torch.uint8, device=device)
    big.fill_(1)
    torch.cuda.synchronize()
    rows.append(snap("+8 GiB tensor"))
    del big, a
    rows.append(snap("freed (cache kept)"))
    torch.cuda.empty_cache()
    rows.append(snap("after empty_cache"))
    base = rows[0]["nvml_used_v2"]
    for row in rows:
        row["non_torch_bytes"] = row["nvml_used_v2"] - base - row["torch_reserved"]
        row["process_minus_reserved"] = (row["nvml_process_used"] - row["torch_reserved"]
                                         if row["nvml_process_used"] is not None else None)
    b.close()
    return {"rows": rows, "baseline_used_v2": base,
            "v1_minus_v2": rows[0]["nvml_used_v1"] - rows[0]["nvml_used_v2"]}


# -- per-call costs ---------------------------------------------------------------------------

def costs_section(load: Load, index: int | None) -> dict[str, Any]:
    from profiling.backends import nvml

    if index is None:
        return {"skipped": "no NVML"}
    pv = nvml.pynvml
    h = pv.nvmlDeviceGetHandleByIndex(index)
    b = nvml.NvmlBackend(indices=[index], gpm_thread=False)
    out: dict[str, Any] = {"status": b.status()["devices"][f"gpu{index}"],
                           "driver": b.driver_version}

    def per_call_us(fn: Callable[[], object], n: int = 300) -> float:
        ts = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ts.append((time.perf_counter_ns() - t0) / 1e3)
        return round(statistics.median(ts), 2)

    calls = {
        "memory_v2": lambda: pv.nvmlDeviceGetMemoryInfo(h, version=pv.nvmlMemory_v2),
        "utilization": lambda: pv.nvmlDeviceGetUtilizationRates(h),
        "power_instant_field": lambda: pv.nvmlDeviceGetFieldValues(
            h, [pv.NVML_FI_DEV_POWER_INSTANT]),
        "power_usage_avg": lambda: pv.nvmlDeviceGetPowerUsage(h),
        "sm_clock": lambda: pv.nvmlDeviceGetClockInfo(h, pv.NVML_CLOCK_SM),
        "temperature": lambda: pv.nvmlDeviceGetTemperature(h, pv.NVML_TEMPERATURE_GPU),
        "process_list": lambda: pv.nvmlDeviceGetComputeRunningProcesses(h),
        "device_sweep": lambda: b.read(index),
        "backend_sample": lambda: b.sample(time.time_ns()),
    }
    out["per_call_us"] = {k: per_call_us(fn) for k, fn in calls.items()}
    reader = energy_counter("cuda:0").reader
    if reader is not None:
        out["per_call_us"]["energy_counter"] = per_call_us(reader, 25)
    gpm = []
    for _ in range(8):
        time.sleep(0.11)
        t0 = time.perf_counter_ns()
        b.poll_gpm()
        gpm.append((time.perf_counter_ns() - t0) / 1e3)
    out["per_call_us"]["gpm_poll_sample_and_metrics"] = round(statistics.median(gpm), 1)
    b.close()

    # How often each power reading changes under load (a background poller at ~1 kHz).
    trace: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            inst = pv.nvmlDeviceGetFieldValues(h, [pv.NVML_FI_DEV_POWER_INSTANT])[0]
            trace.append((time.monotonic(), nvml._field_value(inst) or -1.0,
                          float(pv.nvmlDeviceGetPowerUsage(h))))
            time.sleep(0.001)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    load.for_seconds(2.0, duty=0.5, period_s=0.2)
    stop.set()
    th.join()
    span = trace[-1][0] - trace[0][0]

    def changes(col: int) -> float:
        return sum(1 for a, c in zip(trace, trace[1:], strict=False) if a[col] != c[col]) / span

    def spread(col: int) -> dict[str, float]:
        xs = [row[col] / 1000.0 for row in trace]
        return {"min_w": min(xs), "max_w": max(xs), "stdev_w": round(statistics.pstdev(xs), 1)}

    out["power_updates_per_s"] = {"instant": round(changes(1), 1),
                                  "average": round(changes(2), 1), "polls": len(trace),
                                  "seconds": round(span, 2)}
    out["power_spread_square_wave_0.2s"] = {"instant": spread(1), "average": spread(2)}
    return out


# -- daemon helpers ----------------------------------------------------------------------------

class Collector:
    """A subscriber thread recording (receive wall clock, sample)."""

    def __init__(self, home: Path) -> None:
        self.sub = client.subscribe(home, since_ns=None, timeout_s=10)
        self.rows: list[tuple[int, Sample]] = []
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self) -> None:
        try:
            for s in self.sub:
                self.rows.append((time.time_ns(), s))
        except client.DaemonError:
            pass

    def close(self) -> None:
        self.sub.close()
        self.th.join(5)

    def device(self, dev: str) -> list[Sample]:
        return [s for _, s in self.rows if s.device == dev]

    def latency_ms(self, since_ns: int = 0) -> dict[str, Any]:
        lat = sorted((r - s.t_ns) / 1e6 for r, s in self.rows if s.t_ns >= since_ns)
        return {"n": len(lat), "p50": metrics.percentile(lat, 50),
                "p95": metrics.percentile(lat, 95), "p99": metrics.percentile(lat, 99),
                "max": lat[-1] if lat else None}


def start_daemon(home: Path, rate_hz: float, simulate: bool) -> client.DaemonInfo:
    info = client.ensure_daemon(home, rate_hz=rate_hz, idle_exit_s=120, timeout_s=30,
                                simulate_gpu=simulate)
    client.watch(home, os.getpid(), "bench", simulate_gpu=simulate)
    return info


# -- fidelity ------------------------------------------------------------------------------------

def fidelity_section(load: Load, home: Path, simulate: bool) -> dict[str, Any]:
    dev = sample_device_for(load.device) if load.cuda else "gpu0"
    counter = energy_counter(load.device)
    reader, source = counter.reader, counter.source
    meter = WindowMeter(load.sync, reader, dev, source)
    out: dict[str, Any] = {"device": dev, "energy_source": source}
    # (name, seconds, duty, period): "bursty" toggles every 0.15 s, faster than NVML's
    # ~10 Hz power refresh (the worst case for sampled power); "bursty1s" every 0.5 s.
    plans = {10.0: [("idle", 3.0, 0.0, 0.3), ("steady", 6.0, 1.0, 0.3),
                    ("bursty", 6.0, 0.5, 0.3), ("bursty1s", 6.0, 0.5, 1.0)],
             50.0: [("steady", 5.0, 1.0, 0.3), ("bursty", 5.0, 0.5, 0.3),
                    ("bursty1s", 5.0, 0.5, 1.0)]}
    for rate, plan in plans.items():
        info = start_daemon(home, rate, simulate)
        time.sleep(1.5)  # NVML init and the first GPM interval
        col = Collector(home)
        t_start = time.time_ns()
        windows = []
        for name, seconds, duty, period in plan:
            with meter.measure(name) as w:
                if duty > 0:
                    load.for_seconds(seconds, duty=duty, period_s=period)
                else:
                    time.sleep(seconds)
            windows.append(w.result)
        time.sleep(0.3)  # the samples just past the last edge
        st = client.daemon_status(home) or {}
        col.close()
        client.stop_daemon(home)
        gpu = col.device(dev)
        t = [s.t_ns for s in gpu]
        rows = []
        for w in windows:
            assert w is not None
            integral = metrics.energy_integral_j(t, [s.power_w for s in gpu], w.t0_ns, w.t1_ns)
            pcu, pcu_src = metrics.pcu(gpu, w.t0_ns + 500_000_000, w.t1_ns)
            inside = [s for s in gpu if w.t0_ns <= s.t_ns <= w.t1_ns]
            util = [s.util_pct for s in inside if s.util_pct is not None]
            err = (100.0 * (integral - w.energy_j) / w.energy_j
                   if integral is not None and w.energy_j else None)
            rows.append({"window": w.name, "seconds": round(w.elapsed_s, 3),
                         "energy_counter_j": w.energy_j, "energy_integral_j": integral,
                         "diff_pct": err, "mean_power_w": w.mean_power_w,
                         "pcu": pcu, "pcu_source": pcu_src,
                         "mean_util_pct": sum(util) / len(util) if util else None,
                         "samples": len(inside)})
            print(f"  {rate:>4g} Hz {w.name:<7} {w.elapsed_s:5.2f} s  counter "
                  f"{w.energy_j or 0:8.1f} J  integral {integral or 0:8.1f} J  "
                  f"diff {err if err is not None else float('nan'):+6.2f} %  pcu "
                  f"{pcu if pcu is not None else float('nan'):.3f} ({pcu_src})", flush=True)
        out[f"{rate:g}hz"] = {"windows": rows, "latency_ms": col.latency_ms(t_start),
                              "overruns": st.get("overruns"), "daemon_pid": info.pid,
                              "backend_notes": st.get("backend_notes"),
                              "frames_dropped": st.get("frames_dropped")}
    return out


# -- overhead ------------------------------------------------------------------------------------

def overhead_section(load: Load, home: Path, pairs: int, seg_s: float,
                     simulate: bool, gap_s: float = 3.0, preload_s: float = 1.5
                     ) -> dict[str, Any]:
    """Every segment starts alike, daemon or not: `gap_s` idle since the last segment
    (the daemon, when on, starts at the beginning of it), then `preload_s` of untimed load
    to reach the power-capped steady state, then the timed matmuls. Without that, a
    segment that follows a daemon start begins cooler and boosts higher, which biases
    the comparison (seen on the first run: 'on' looked 0.6 % faster than 'off')."""
    iters = load.calibrate(seg_s)
    modes = ["off", "10", "50"]
    res: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {"10": [], "50": []}
    order_log = []
    last_end = time.monotonic()
    for i in range(pairs):
        order = modes[i % 3:] + modes[:i % 3]
        order_log.append(order)
        for mode in order:
            proc = None
            if mode != "off":
                info = start_daemon(home, float(mode), simulate)
                proc = psutil.Process(info.pid)
            time.sleep(max(0.0, last_end + gap_s - time.monotonic()))
            if proc is not None:
                c0 = proc.cpu_times()
                m0 = time.monotonic()
            load.for_seconds(preload_s)
            thr = load.tflops(iters)
            last_end = time.monotonic()
            if proc is not None:
                c1 = proc.cpu_times()
                cpu[mode].append(100.0 * (c1.user + c1.system - c0.user - c0.system)
                                 / (time.monotonic() - m0))
                client.stop_daemon(home)
            res[mode].append(thr)
            print(f"  round {i} {mode:>3}: {thr:8.2f} TFLOP/s"
                  + (f"  daemon cpu {cpu[mode][-1]:.2f} %" if proc is not None else ""),
                  flush=True)
    out: dict[str, Any] = {"iters_per_segment": iters, "orders": order_log,
                           "gap_s": gap_s, "preload_s": preload_s,
                           "tflops": res, "daemon_cpu_pct": cpu}
    for mode in ("10", "50"):
        diffs = [100.0 * (off - on) / off for off, on in zip(res["off"], res[mode], strict=True)]
        out[f"cost_pct_{mode}hz"] = {"median": med(diffs), "mean": statistics.fmean(diffs),
                                     "stdev": statistics.stdev(diffs) if len(diffs) > 1
                                     else None, "per_round": diffs}
        out[f"daemon_cpu_pct_{mode}hz_median"] = med(cpu[mode])
    off = res["off"]
    out["off_spread_pct"] = 100.0 * (max(off) - min(off)) / statistics.fmean(off)
    return out


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--seg-s", type=float, default=3.0)
    p.add_argument("--only", default="memory,costs,fidelity,overhead")
    p.add_argument("--dry-run", action="store_true", help="CPU load, simulated GPU")
    a = p.parse_args()
    OUT = a.out
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    simulate = a.dry_run
    device = "cpu" if a.dry_run else "cuda:0"
    index = None
    if not a.dry_run:
        from profiling.backends import nvml

        index = nvml.nvml_index_for_cuda(0)
    R["env"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
                "torch": torch.__version__, "python": sys.version.split()[0],
                "cpus": psutil.cpu_count(), "device": device, "nvml_index": index,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "args": vars(a)}
    if "memory" in only and not a.dry_run:
        section("memory", lambda: memory_section(device, index))  # before anything else
    if not a.dry_run:
        R["env"]["gpu"] = torch.cuda.get_device_name(0)
    load = Load(device)
    load.for_seconds(1.0 if a.dry_run else 6.0)  # warm up clocks and cuBLAS
    R["env"]["warm_tflops"] = load.tflops(load.calibrate(0.5))
    print(f"warm: {R['env']['warm_tflops']:.1f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="ellm-bench-") as d:
        home = Path(d) / "home"
        if "costs" in only and not a.dry_run:
            section("costs", lambda: costs_section(load, index))
        if "fidelity" in only:
            section("fidelity", lambda: fidelity_section(load, home, simulate))
        if "overhead" in only:
            section("overhead", lambda: overhead_section(load, home, a.pairs, a.seg_s, simulate))
        try:
            client.stop_daemon(home)
        except client.DaemonError:
            pass
    save()
    print_table()
    return 0


def print_table() -> None:
    print("\n=== summary ===")
    env = R.get("env", {})
    print(f"{env.get('gpu', env.get('device'))}  torch {env.get('torch')}  "
          f"warm {env.get('warm_tflops', 0):.1f} TFLOP/s")
    ov = R.get("overhead", {})
    for mode in ("10", "50"):
        c = ov.get(f"cost_pct_{mode}hz")
        if c:
            print(f"overhead {mode:>2} Hz: throughput cost median {c['median']:+.3f} % "
                  f"(mean {c['mean']:+.3f}, sd {c['stdev'] or 0:.3f}; off spread "
                  f"{ov.get('off_spread_pct', 0):.3f} %), daemon CPU "
                  f"{ov.get(f'daemon_cpu_pct_{mode}hz_median') or 0:.2f} % of a core")
    fid = R.get("fidelity", {})
    for rate in ("10hz", "50hz"):
        f = fid.get(rate)
        if not f:
            continue
        for w in f["windows"]:
            d = w["diff_pct"]
            print(f"fidelity {rate} {w['window']:<7} counter {w['energy_counter_j'] or 0:8.1f} J "
                  f"integral {w['energy_integral_j'] or 0:8.1f} J diff "
                  f"{d if d is not None else float('nan'):+.2f} %  pcu {w['pcu'] or 0:.3f} "
                  f"({w['pcu_source']})  util {w['mean_util_pct'] or 0:.1f} %")
        lat = f["latency_ms"]
        print(f"latency {rate}: p50 {lat['p50'] or 0:.2f} ms p95 {lat['p95'] or 0:.2f} ms "
              f"p99 {lat['p99'] or 0:.2f} ms max {lat['max'] or 0:.2f} ms (n={lat['n']})")
    costs = R.get("costs", {})
    if "per_call_us" in costs:
        print("per call (us): " + ", ".join(f"{k} {v}" for k, v in costs["per_call_us"].items()))
        print(f"power updates/s under load: {costs.get('power_updates_per_s')}")
    mem = R.get("memory", {})
    for row in mem.get("rows", []):
        print(f"memory {row['step']:<22} nvml v2 {row['nvml_used_v2'] / MIB:8.0f} MiB  "
              f"torch reserved {row['torch_reserved'] / MIB:8.0f}  non-torch "
              f"{row['non_torch_bytes'] / MIB:7.0f} MiB")
    for name, sec in R.items():
        if isinstance(sec, dict) and "error" in sec:
            print(f"SECTION {name} FAILED: {sec['error']}")


if __name__ == "__main__":
    sys.exit(main())
