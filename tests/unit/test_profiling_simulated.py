"""The simulated GPU: deterministic, always labelled, following the watched run's phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiling import metrics
from profiling.backends.base import WatchSet, load_backend
from profiling.backends.simulated import H100_MEM_TOTAL_BYTES, SimulatedBackend, level_for

S = 1_000_000_000
T0 = 1_800_000_000 * S


def write_events(home: Path, run_id: str, events: list[dict[str, object]],
                 tail: str = "") -> Path:
    path = home / "runs" / run_id / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
        f.write(tail)
    return path


def series(b: SimulatedBackend, times_ns: list[int]) -> list[tuple[object, ...]]:
    return [tuple(s.to_dict().values()) for t in times_ns for s in b.sample(t)]


def test_same_seed_same_readings_other_seed_other_readings(tmp_path: Path) -> None:
    times = [T0 + i * S // 10 for i in range(30)]
    a = SimulatedBackend(seed=7, n_devices=2, home=tmp_path, host="h")
    b = SimulatedBackend(seed=7, n_devices=2, home=tmp_path, host="h")
    c = SimulatedBackend(seed=8, n_devices=2, home=tmp_path, host="h")
    assert series(a, times) == series(b, times)
    assert series(a, times) != series(c, times)
    assert series(a, times[:5]) == series(a, times[:5])  # a pure function of time too


def test_labels_and_plausible_h100_numbers(tmp_path: Path) -> None:
    b = SimulatedBackend(seed=1, n_devices=3, home=tmp_path)
    assert b.devices() == ["gpu0", "gpu1", "gpu2"]
    samples = [s for i in range(50) for s in b.sample(T0 + i * S // 10)]
    assert all(s.source == "simulated" and s.simulated for s in samples)
    for s in samples:
        assert s.mem_total_bytes == H100_MEM_TOTAL_BYTES
        assert s.mem_used_bytes is not None and 0 < s.mem_used_bytes < s.mem_total_bytes
        assert s.power_w is not None and 70 <= s.power_w <= 700
        for pct in (s.util_pct, s.sm_active_pct, s.tensor_active_pct, s.dram_active_pct):
            assert pct is not None and 0 <= pct <= 100
        assert s.sm_clock_mhz is not None and s.temp_c is not None
    assert b.status()["simulated"] is True


def test_follows_the_watched_runs_phases(tmp_path: Path) -> None:
    ws = WatchSet()
    b = SimulatedBackend(ws, seed=3, n_devices=2, home=tmp_path)
    write_events(tmp_path, "run-1", [
        {"t_ns": T0, "kind": "started", "device": "cuda:1", "pid": 1},
        {"t_ns": T0 + 1 * S, "kind": "phase", "name": "load"},
    ], tail='{"t_ns": ')  # a line still being written
    ws.add(4242, "run-1")

    def at(dt_s: float, gpu: int = 1):  # type: ignore[no-untyped-def]
        return b.sample(T0 + int(dt_s * S))[gpu]

    idle = at(0.5)
    assert idle.power_w is not None and idle.power_w < 90 and idle.util_pct == 0.0
    loading = at(3.0)
    assert loading.mem_used_bytes is not None and idle.mem_used_bytes is not None
    assert loading.mem_used_bytes > idle.mem_used_bytes + 3 * 1024**3  # weights arriving
    write_events(tmp_path, "run-1", [], tail=f'{T0 + 4 * S}, "kind": "phase", '
                                             '"name": "warmup"}\n')
    write_events(tmp_path, "run-1", [{"t_ns": T0 + 6 * S, "kind": "phase", "name": "measure"}])
    busy = at(10.0)
    assert busy.power_w is not None and busy.power_w > 450
    assert busy.util_pct is not None and busy.util_pct > 90
    assert busy.sm_active_pct is not None and busy.sm_active_pct > 75
    assert busy.temp_c is not None and idle.temp_c is not None and busy.temp_c > idle.temp_c
    assert at(10.0, gpu=0).power_w < 90  # type: ignore[operator]  # another GPU stays idle
    assert b.status()["runs"]["run-1"] == {"gpu": "gpu1", "level": "busy"}
    write_events(tmp_path, "run-1", [{"t_ns": T0 + 12 * S, "kind": "result"}])
    after = at(20.0)
    assert after.power_w is not None and after.power_w < 90  # back to idle

    samples = [b.sample(T0 + 6 * S + i * S // 10)[1] for i in range(40)]
    value, source = metrics.pcu(samples, samples[0].t_ns, samples[-1].t_ns)
    assert source == "simulated" and value is not None and value > 0.8


def test_unwatched_run_and_cpu_run_drive_gpu0(tmp_path: Path) -> None:
    ws = WatchSet()
    b = SimulatedBackend(ws, seed=0, n_devices=2, home=tmp_path)
    write_events(tmp_path, "cpu-run", [
        {"t_ns": T0, "kind": "started", "device": "cpu"},
        {"t_ns": T0, "kind": "phase", "name": "measure"}])
    ws.add(1, "cpu-run")
    assert b.sample(T0 + 5 * S)[0].power_w > 450  # type: ignore[operator]
    ws.discard(1)
    assert b.sample(T0 + 6 * S)[0].power_w < 90  # type: ignore[operator]
    ws.add(2, "missing-run")  # no run dir: idle, no error
    assert b.sample(T0 + 7 * S)[0].util_pct == 0.0


def test_level_names_and_loading() -> None:
    assert [level_for(p) for p in (None, "load", "eval", "warmup", "measure", "train")] == \
        ["idle", "load", "eval", "busy", "busy", "busy"]
    b = load_backend("simulated", WatchSet(), seed=5, n_devices=2)
    assert isinstance(b, SimulatedBackend) and b.seed == 5 and b.devices() == ["gpu0", "gpu1"]
    with pytest.raises(ValueError):
        SimulatedBackend(n_devices=0)
