"""Ingest against hand-computed values: AMU, PCU and the power integral of the measured
window from a hand-made spool, a gap in the samples reported (never bridged), and every
NULL stored with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from efficientllm_tui.runs import ingest, rundir, specs
from profiling import home as homes
from profiling.daemon.spool import SpoolWriter
from profiling.sample import Sample

S = 1_000_000_000
T0 = 1_800_000_000 * S
GIB = 2**30


def _gpu(t_ns: int, mem_gib: float, *, sm: float = 50.0, power_w: float = 300.0) -> Sample:
    return Sample(t_ns=t_ns, host="h", device="gpu0", source="nvml",
                  mem_used_bytes=int(mem_gib * GIB), mem_total_bytes=80 * GIB, util_pct=100.0,
                  sm_active_pct=sm, power_w=power_w)


def _spool(home: Path, samples: list[Sample]) -> None:
    w = SpoolWriter(homes.spool_dir(home))
    w.write_samples(samples)
    w.close()


def _run_dir(home: Path, *, t0_s: float, t1_s: float, result: dict[str, Any] | None = None,
             window: dict[str, Any] | None = None) -> Path:
    spec = specs.build_spec(model="tiny", technique="fp32", device="cuda:0", steps=2,
                               warmup=0)
    run_dir = rundir.prepare(spec, home)
    events = [
        {"t_ns": T0, "kind": "started", "pid": 1, "host": "h", "device": "cuda:0",
         "sample_device": "gpu0", "cpu_count": 4},
        {"t_ns": T0 + int(t1_s * S), "kind": "window", "name": "measure", "device": "gpu0",
         "t0_ns": T0 + int(t0_s * S), "t1_ns": T0 + int(t1_s * S), "energy_j": None,
         **(window or {})},
        {"t_ns": T0 + 2 * S, "kind": "result", "status": "ok",
         **(result or {"metrics": [], "info": {"profiler_watched": True}})},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def _metrics(run_dir: Path, home: Path) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in ingest.build_bundle(run_dir, home).metrics}


def test_amu_pcu_and_power_integral_by_hand(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # 10 Hz for 2 s; memory grows 1 GiB a tick (10 GiB/s), so over [0.5 s, 1.5 s] the
    # time-weighted mean is the value at 1.0 s: 10 GiB of 80.
    _spool(home, [_gpu(T0 + i * S // 10, i) for i in range(21)])
    m = _metrics(_run_dir(home, t0_s=0.5, t1_s=1.5), home)
    assert m["amu_gib"]["value"] == pytest.approx(10.0)
    assert m["amu"]["value"] == pytest.approx(10.0 / 80)
    assert (m["amu"]["source"], m["amu"]["note"]) == ("nvml", None)
    assert m["pcu"]["value"] == pytest.approx(0.5) and m["pcu"]["source"] == "gpm"
    assert m["energy_integral_j"]["value"] == pytest.approx(300.0)  # 300 W for 1 s
    assert m["sample_coverage"]["value"] == pytest.approx(1.0)


def test_a_gap_is_reported_not_bridged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # 20 GiB for 0.0-0.3 s, then nothing for 1.2 s (a daemon stopped), then 60 GiB for
    # 1.5-2.0 s. Bridging the hole would interpolate 20 -> 60 GiB across it (mean 42 GiB);
    # the observed mean is (20 x 0.3 + 60 x 0.5) / 0.8 = 45 GiB, over 40 % of the window.
    before = [_gpu(T0 + i * S // 10, 20) for i in range(4)]
    after = [_gpu(T0 + i * S // 10, 60) for i in range(15, 21)]
    _spool(home, before + after)
    m = _metrics(_run_dir(home, t0_s=0.0, t1_s=2.0), home)
    assert m["amu_gib"]["value"] == pytest.approx(45.0)
    assert m["sample_coverage"]["value"] == pytest.approx(0.4)
    note = ("samples cover 40% of the measured window (longest gap 1.2 s); the mean is over "
            "the covered part")
    for name in ("amu", "amu_gib", "pcu", "energy_integral_j", "sample_coverage"):
        assert m[name]["note"] == note, name


def test_no_samples_say_why(tmp_path: Path) -> None:
    home = tmp_path / "home"
    homes.spool_dir(home).mkdir(parents=True)
    unwatched = {"metrics": [], "info": {"profiler_watched": False}}
    m = _metrics(_run_dir(home, t0_s=0.5, t1_s=1.5, result=unwatched), home)
    for name in ("amu", "amu_gib", "pcu"):
        assert (m[name]["value"], m[name]["source"]) == (None, "none")
        assert m[name]["note"] == ("no samples of gpu0 in the measured window: no profiling "
                                   "daemon was reachable when the run started")
    assert m["sample_coverage"]["value"] == 0.0


def test_runner_notes_and_the_energy_note_reach_the_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _spool(home, [_gpu(T0 + i * S // 10, 1) for i in range(21)])
    why = "no energy counter for cuda:0: NvmlNotSupported: GPU 0 has no energy counter"
    result = {"metrics": [
        {"name": "energy_j", "value": None, "unit": "J", "source": "none", "note": why},
        {"name": "al_s", "value": 0.25, "unit": "s", "source": "runner"},
        {"name": "mcr", "value": None, "unit": "ratio", "source": "runner"},  # an old runner
    ], "info": {"profiler_watched": True}}
    run_dir = _run_dir(home, t0_s=0.5, t1_s=1.5, result=result, window={"energy_note": why})
    bundle = ingest.build_bundle(run_dir, home)
    m = {x["name"]: x for x in bundle.metrics}
    assert (m["energy_j"]["source"], m["energy_j"]["note"]) == ("none", why)
    assert (m["al_s"]["value"], m["al_s"]["note"]) == (0.25, None)
    assert (m["mcr"]["source"], m["mcr"]["note"]) == ("none", "not measured by this run")
    assert bundle.run["energy_note"] == why


def test_a_multi_rank_run_stopped_by_a_failing_rank_is_stored_with_its_cause(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = specs.build_spec(model="tiny", technique="lora", device="cpu", steps=2, warmup=0,
                            world_size=2)
    run_dir = rundir.prepare(spec, home)
    started = {"t_ns": T0, "kind": "started", "pid": 1, "host": "h", "device": "cpu"}
    (run_dir / "events.jsonl").write_text(json.dumps(started) + "\n" + json.dumps(
        {"t_ns": T0 + S, "kind": "error", "type": "crash", "message": "cancelled"}) + "\n")
    (run_dir / "events.rank1.jsonl").write_text(json.dumps({**started, "pid": 2}) + "\n"
        + json.dumps({"t_ns": T0 + S, "kind": "error", "type": "crash",
                      "message": "RuntimeError: a rank's own failure"}) + "\n")
    state = ingest.classify(run_dir, alive=False)
    assert (state.status, state.error_type, state.error_text) == (
        "failed", "crash", "rank 1: RuntimeError: a rank's own failure")
