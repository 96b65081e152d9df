"""Ingest gives simulated samples only to a run that asked for them (DESIGN.md section 4): a
simulating daemon that outlived its run must not lend its GPU to a later plain run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientllm_tui.runs import ingest, rundir, specs
from profiling import home as homes
from profiling.daemon.spool import SpoolWriter
from profiling.daemon.wire import sample_line
from profiling.sample import Sample

S = 1_000_000_000
T0 = 1_800_000_000 * S


def _spool(home: Path) -> None:
    """2 s of a simulated gpu0 (what a `--simulate-gpu` daemon sends) and the real host."""
    w = SpoolWriter(homes.spool_dir(home))
    batch = []
    for i in range(21):
        t = T0 + i * S // 10
        for s in (Sample(t_ns=t, host="h", device="gpu0", source="simulated",
                         mem_used_bytes=40 * 2**30, mem_total_bytes=80 * 2**30, util_pct=99.0,
                         power_w=585.0),
                  Sample(t_ns=t, host="h", device="cpu", source="psutil",
                         mem_used_bytes=8 * 2**30, mem_total_bytes=64 * 2**30, util_pct=20.0,
                         rss_bytes=2**30, cpu_pct=200.0)):
            batch.append((t, sample_line(s)))
    w.write(batch)
    w.close()


def _run_dir(home: Path, device: str, simulate: bool) -> Path:
    spec = specs.build_spec(model="tiny", technique="fp32", device=device, steps=2, warmup=0,
                               simulate_gpu=simulate)
    run_dir = rundir.prepare(spec, home)
    events = [
        {"t_ns": T0, "kind": "started", "pid": 1, "host": "h", "device": device,
         "sample_device": "gpu0" if device.startswith("cuda") else "cpu", "cpu_count": 4},
        {"t_ns": T0 + 5 * S // 10, "kind": "window", "name": "measure", "device": device,
         "t0_ns": T0 + 5 * S // 10, "t1_ns": T0 + 15 * S // 10},
        {"t_ns": T0 + 2 * S, "kind": "result", "status": "ok", "metrics": [], "info": {}},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_plain_run_gets_no_simulated_samples(tmp_path: Path, device: str) -> None:
    home = tmp_path / "home"
    _spool(home)
    bundle = ingest.build_bundle(_run_dir(home, device, simulate=False), home)
    assert bundle.run["simulated"] is False
    assert {(s.device, s.source) for s in bundle.samples} == {("cpu", "psutil")}
    assert len(bundle.samples) == 21
    metrics = {m["name"]: m for m in bundle.metrics}
    assert "simulated" not in {m["source"] for m in bundle.metrics}
    if device == "cpu":  # the runner's own memory and CPU time, as before
        assert metrics["amu"]["source"] == metrics["pcu"]["source"] == "psutil"
        assert metrics["amu"]["value"] == pytest.approx(1 / 64)
        assert metrics["pcu"]["value"] == pytest.approx(200 / 100 / 4)
    else:  # its GPU was not sampled: unknown, never the simulated card's numbers
        assert metrics["amu"]["value"] is None and metrics["pcu"]["value"] is None


def test_simulated_run_keeps_its_simulated_samples(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _spool(home)
    bundle = ingest.build_bundle(_run_dir(home, "cpu", simulate=True), home)
    assert bundle.run["simulated"] is True
    assert {(s.device, s.source) for s in bundle.samples} == {("cpu", "psutil"),
                                                              ("gpu0", "simulated")}
    metrics = {m["name"]: m for m in bundle.metrics}
    assert metrics["amu"]["source"] == "simulated"
    assert metrics["amu"]["value"] == pytest.approx(40 / 80)
