"""The workload of benchmarks/bench_profiling_gpu.py: a matmul loop that keeps the device
busy (steadily or in bursts), times its own throughput and calibrates its length.
"""

from __future__ import annotations

import time

import torch


class Load:
    """A bf16 matmul loop on the device (float32 and small on the CPU, for --dry-run)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        n = 8192 if self.cuda else 384
        dtype = torch.bfloat16 if self.cuda else torch.float32
        self.x = torch.randn(n, n, device=device, dtype=dtype)
        self.y = torch.randn(n, n, device=device, dtype=dtype)
        self.o = torch.empty(n, n, device=device, dtype=dtype)
        self.flops = 2.0 * n**3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, iters: int) -> None:
        for _ in range(iters):
            torch.mm(self.x, self.y, out=self.o)

    def for_seconds(self, seconds: float, duty: float = 1.0, period_s: float = 0.3) -> int:
        """Keep the device busy (or busy for `duty` of each period) for `seconds`."""
        end = time.monotonic() + seconds
        done = 0
        while time.monotonic() < end:
            if duty >= 1.0:
                self.run(10)
                self.sync()
                done += 10
                continue
            busy_end = time.monotonic() + duty * period_s
            while time.monotonic() < busy_end:
                self.run(5)
                self.sync()
                done += 5
            time.sleep(max(0.0, (1 - duty) * period_s))
        return done

    def tflops(self, iters: int) -> float:
        """Throughput of `iters` back-to-back matmuls, timed on the device."""
        self.sync()
        if self.cuda:
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            self.run(iters)
            e1.record()
            torch.cuda.synchronize()
            seconds = e0.elapsed_time(e1) / 1e3
        else:
            t0 = time.perf_counter()
            self.run(iters)
            seconds = time.perf_counter() - t0
        return iters * self.flops / seconds / 1e12

    def calibrate(self, seconds: float) -> int:
        t0 = time.perf_counter()
        self.run(20)
        self.sync()
        per = (time.perf_counter() - t0) / 20
        return max(20, int(seconds / per))
