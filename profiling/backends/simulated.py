"""A simulated H100-like GPU for machines without one: demos, tests and screenshots.

Never chosen silently: the daemon runs it only with `--simulate-gpu` (or
EFFICIENTLLM_SIMULATE_GPU=1 through `ensure_daemon`), in place of NVML, and says
`simulated: true` in its status, and samples it only while a run that asked for it is
watched; its watch set holds only those runs (profiling.daemon.service says why). Every sample it
makes has source 'simulated', so every metric computed from it carries that source
(DESIGN.md section 4).

Why it is built this way:
- Deterministic: a reading is a pure function of the seed, the device, the sample time and
  the phase events of the watched runs. Noise comes from a generator seeded by
  (seed, device, 100 ms bucket), never from global state, so two backends with one seed
  agree to the last digit.
- Alive: it tails `<home>/runs/<run_id>/events.jsonl` of every watched run and follows its
  `phase` events: idle (no run, or after `result`/`error`), `load` (memory fills, light
  compute), `eval`, and every other phase (`warmup`, `measure`, training) at full load.
  Each signal moves toward its phase's level with a time constant (0.4 s for power and
  activity, 30 s for temperature), computed from the phase start times in the events, so
  the curves ramp rather than jump.
- A run on 'cuda:N' drives gpuN (modulo the simulated count); a run on the CPU or of unknown
  device drives gpu0, so a CPU-only demo still moves the graphs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiling import home as home_mod
from profiling.backends.base import Backend, WatchSet
from profiling.sample import Sample

GIB = 1024**3
MIB = 1024**2
H100_MEM_TOTAL_BYTES = 81559 * MIB
"""What NVML reports for an H100 80GB HBM3."""
_BASE_MEM_BYTES = 537 * MIB
"""Driver bookkeeping on an idle card."""
_FAST_TAU_S = 0.4
_TEMP_TAU_S = 30.0
_NOISE_BUCKET_NS = 100_000_000


@dataclass(frozen=True, slots=True)
class Level:
    """The steady state of a device in one phase (what the signals move toward)."""

    util_pct: float
    sm_pct: float
    tensor_pct: float
    dram_pct: float
    power_w: float
    clock_mhz: float
    temp_c: float
    mem_frac: float
    """Share of the run's memory footprint resident in this phase."""


LEVELS: dict[str, Level] = {
    "idle": Level(0.0, 0.2, 0.0, 0.3, 72.0, 345.0, 31.0, 0.0),
    "load": Level(12.0, 6.0, 0.5, 14.0, 118.0, 1980.0, 36.0, 0.8),
    "eval": Level(93.0, 71.0, 36.0, 52.0, 430.0, 1980.0, 60.0, 1.0),
    "busy": Level(99.0, 89.0, 57.0, 44.0, 585.0, 1980.0, 67.0, 1.0),
}
_CHANNELS = ("util", "sm", "tensor", "dram", "power", "clock", "temp")


def level_for(phase: str | None) -> str:
    """The level a phase name runs at."""
    if phase is None or phase in ("idle", "done"):
        return "idle"
    if phase in ("load", "eval"):
        return phase
    return "busy"


@dataclass
class _Run:
    """The phase history of one watched run, read from its events.jsonl."""

    run_id: str
    path: Path
    offset: int = 0
    pending: bytes = b""
    gpu: int = 0
    phases: list[tuple[int, str]] = field(default_factory=list)
    """(t_ns, level name) in event order."""
    mem_bytes: int = 0


def _run_mem_bytes(seed: int, run_id: str) -> int:
    """A plausible, stable footprint for a run: 4 to 40 GiB."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{run_id}".encode()).digest()[:4], "big")
    return int((4 + (h % 3700) / 100.0) * GIB)


def _settle(history: list[tuple[int, str]], t_ns: int, attr: str, tau_s: float) -> float:
    """Value of `attr` at t_ns, relaxing toward each phase's level from the previous one."""
    value = getattr(LEVELS["idle"], attr)
    for i, (start, name) in enumerate(history):
        if start > t_ns:
            break
        end = history[i + 1][0] if i + 1 < len(history) else t_ns
        end = min(end, t_ns)
        target = getattr(LEVELS[name], attr)
        value = target + (value - target) * math.exp(-max(0, end - start) / 1e9 / tau_s)
    return value


class SimulatedBackend(Backend):
    """`n_devices` simulated GPUs 'gpu0', 'gpu1', ... with source 'simulated'."""

    name = "simulated"

    def __init__(self, watch_set: WatchSet | None = None, *, seed: int = 0,
                 n_devices: int = 1, home: Path | str | None = None,
                 host: str | None = None,
                 mem_total_bytes: int = H100_MEM_TOTAL_BYTES) -> None:
        """Build the backend.

        Args:
            watch_set: the daemon's watched runners; their run ids locate events.jsonl.
            seed: the same seed and events give the same readings.
            n_devices: how many GPUs to simulate.
            home: data dir holding runs/<run_id>/; the default data dir when None.
            host: host name written in every sample.
            mem_total_bytes: device memory size (an H100 80GB by default).
        """
        if n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {n_devices}")
        self.watch_set = watch_set if watch_set is not None else WatchSet()
        self.seed = int(seed)
        self.n_devices = n_devices
        self.home = Path(home) if home is not None else home_mod.data_dir()
        self.host = host or socket.gethostname()
        self.mem_total_bytes = mem_total_bytes
        self._runs: dict[str, _Run] = {}

    def devices(self) -> list[str]:
        return [f"gpu{i}" for i in range(self.n_devices)]

    # -- following the watched runs ----------------------------------------------------------

    def _refresh(self) -> None:
        ids = {w.run_id for w in self.watch_set.entries() if w.run_id}
        for run_id in list(self._runs):
            if run_id not in ids:
                del self._runs[run_id]
        for run_id in ids:
            run = self._runs.get(run_id)
            if run is None:
                path = home_mod.runs_dir(self.home) / run_id / "events.jsonl"
                run = self._runs[run_id] = _Run(run_id, path,
                                                mem_bytes=_run_mem_bytes(self.seed, run_id))
            self._tail(run)

    def _tail(self, run: _Run) -> None:
        try:
            size = os.stat(run.path).st_size
            if size <= run.offset:
                return
            with open(run.path, "rb") as f:
                f.seek(run.offset)
                data = f.read(size - run.offset)
        except OSError:
            return
        run.offset += len(data)
        lines = (run.pending + data).split(b"\n")
        run.pending = lines.pop()  # an unterminated line waits for its end
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("t_ns"), int):
                continue
            kind = event.get("kind")
            if kind == "started":
                run.gpu = self._gpu_of(event.get("device"))
            elif kind == "phase" and isinstance(event.get("name"), str):
                run.phases.append((event["t_ns"], level_for(event["name"])))
            elif kind in ("result", "error"):
                run.phases.append((event["t_ns"], "idle"))

    def _gpu_of(self, device: Any) -> int:
        if isinstance(device, str) and device.startswith("cuda"):
            _, _, index = device.partition(":")
            try:
                return int(index or 0) % self.n_devices
            except ValueError:
                return 0
        return 0

    # -- readings ----------------------------------------------------------------------------

    def _noise(self, gpu: int, t_ns: int) -> dict[str, float]:
        rng = random.Random(f"{self.seed}/gpu{gpu}/{t_ns // _NOISE_BUCKET_NS}")
        return {c: rng.uniform(-1.0, 1.0) for c in _CHANNELS}

    def reading(self, gpu: int, t_ns: int) -> Sample:
        """The sample of simulated GPU `gpu` at `t_ns`, given the runs followed so far."""
        runs = [r for r in self._runs.values() if r.gpu == gpu and r.phases]
        history = sorted(((t, n) for r in runs for t, n in r.phases), key=lambda p: p[0])
        mem_run = max((r.mem_bytes for r in runs), default=0)
        n = self._noise(gpu, t_ns)

        def fast(attr: str) -> float:
            return _settle(history, t_ns, attr, _FAST_TAU_S)

        util = fast("util_pct")
        busy = util / 100.0
        power = fast("power_w") * (1 + 0.04 * n["power"] * (0.3 + busy))
        clock = fast("clock_mhz")
        if clock > 1000:  # under load the clock sags with power, as a real card's does
            clock -= max(0.0, power - 560.0) * 0.9 + 12 * abs(n["clock"])
        temp = _settle(history, t_ns, "temp_c", _TEMP_TAU_S) + 0.4 * n["temp"] + 0.7 * gpu
        mem = _BASE_MEM_BYTES + int(mem_run * fast("mem_frac"))
        return Sample(
            t_ns=t_ns, host=self.host, device=f"gpu{gpu}", source="simulated",
            mem_used_bytes=min(mem, self.mem_total_bytes), mem_total_bytes=self.mem_total_bytes,
            util_pct=round(_clip(util + 1.5 * n["util"] * busy), 1),
            sm_active_pct=round(_clip(fast("sm_pct") + 3.0 * n["sm"] * busy + 0.2 * n["sm"]), 2),
            tensor_active_pct=round(_clip(fast("tensor_pct") + 4.0 * n["tensor"] * busy), 2),
            dram_active_pct=round(_clip(fast("dram_pct") + 3.0 * n["dram"] * busy
                                        + 0.2 * n["dram"]), 2),
            power_w=round(min(700.0, max(70.0, power)), 1),
            sm_clock_mhz=float(round(clock)), temp_c=float(round(temp)),
        )

    def sample(self, now_ns: int) -> list[Sample]:
        self._refresh()
        return [self.reading(i, now_ns) for i in range(self.n_devices)]

    def status(self) -> dict[str, Any]:
        return {"simulated": True, "seed": self.seed, "n_devices": self.n_devices,
                "runs": {r.run_id: {"gpu": f"gpu{r.gpu}",
                                    "level": r.phases[-1][1] if r.phases else "idle"}
                         for r in self._runs.values()}}


def _clip(v: float) -> float:
    return min(100.0, max(0.0, v))
