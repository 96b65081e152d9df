"""`efficientllm show` says whether a run shared its GPU, from a run dir ingested as the
runner wrote it (runs.contended and runs.info), and how the line reads in each case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from efficientllm_tui import cli
from efficientllm_tui.display import contention
from efficientllm_tui.runs import ingest, rundir, specs
from efficientllm_tui.store.db import Store
from profiling import home as homes

S = 1_000_000_000
T0 = 1_800_000_000 * S
GIB = 2**30
NEIGHBOUR = {"pid": 4242, "used_gpu_memory_bytes": int(1.2 * GIB), "first_seen_ns": T0 + S,
             "last_seen_ns": T0 + 3 * S, "name": "python", "pid_namespace": "this",
             "identified": True, "device": "gpu0"}


def _ingested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, info: dict[str, Any]
              ) -> tuple[str, Path]:
    """A finished GPU run whose result carries `info`, ingested into a fresh store."""
    home = tmp_path / "home"
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(home))
    spec = specs.build_spec(model="tiny", technique="fp32", device="cuda:0", steps=2,
                               warmup=0)
    run_dir = rundir.prepare(spec, home)
    events = [
        {"t_ns": T0, "kind": "started", "pid": 1, "host": "h", "device": "cuda:0",
         "sample_device": "gpu0", "cpu_count": 4},
        {"t_ns": T0 + 4 * S, "kind": "result", "status": "ok", "metrics": [],
         "info": {"profiler_watched": False, **info}},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    homes.spool_dir(home).mkdir(parents=True)
    store = Store(tmp_path / "db.duckdb", lock_timeout_s=5)
    ingest.ingest_run(store, run_dir, home, alive=False)
    return spec.run_id, store.path


def _show(capsys: pytest.CaptureFixture[str], run_id: str, db: Path, *extra: str) -> str:
    assert cli.main(["show", run_id, "--db", str(db), *extra]) == 0
    return capsys.readouterr().out


def _contended_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("contended:")]
    assert len(lines) == 1, out
    return lines[0]


def test_show_names_the_neighbour_with_its_memory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_id, db = _ingested(tmp_path, monkeypatch, {
        "contended": True, "contended_note": None, "foreign_processes": [NEIGHBOUR],
        "foreign_pids": [4242]})
    assert _contended_line(_show(capsys, run_id, db)) == \
        "contended: yes — pid 4242 (python, 1.2 GiB) on gpu0"
    doc = json.loads(_show(capsys, run_id, db, "--json"))
    assert doc["contended"] is True  # the column ingest filled, as well as the info
    assert doc["info"]["foreign_processes"] == [NEIGHBOUR]


def test_show_says_unknown_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_id, db = _ingested(tmp_path, monkeypatch, {
        "contended": None, "foreign_processes": None, "foreign_pids": [],
        "contended_note": "this driver does not list the processes on the GPU"})
    assert _contended_line(_show(capsys, run_id, db)) == \
        "contended: unknown — this driver does not list the processes on the GPU"


def test_show_of_a_clean_run_and_of_one_that_recorded_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_id, db = _ingested(tmp_path / "a", monkeypatch, {
        "contended": False, "contended_note": None, "foreign_processes": [],
        "foreign_pids": []})
    assert _contended_line(_show(capsys, run_id, db)) == "contended: no"
    run_id, db = _ingested(tmp_path / "b", monkeypatch, {})
    assert _contended_line(_show(capsys, run_id, db)) == \
        "contended: unknown — not recorded for this run"


def test_the_line_for_host_pids_candidates_and_old_runs() -> None:
    host = {**NEIGHBOUR, "pid": 3100002, "name": None, "pid_namespace": "other",
            "used_gpu_memory_bytes": None, "identified": False}
    run = {"contended": True, "info": {"foreign_processes": [host],
                                       "contended_note": "NVML listed pids from another pid "
                                                         "namespace"}}
    assert contention(run) == ("yes — pid 3100002 (host pid, memory unknown) on gpu0 "
                               "(NVML listed pids from another pid namespace)")
    # a run stored before foreign_processes existed: its pids alone
    assert contention({"contended": True, "info": {"foreign_pids": [7, 9]}}) == \
        "yes — pid 7 (?, memory unknown), pid 9 (?, memory unknown)"
    assert contention({"contended": None, "info": {}}) is None


def test_the_detail_screen_head_says_it_too() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from efficientllm_tui.tui.screens.detail import RunDetailScreen

    screen = SimpleNamespace(run_id="r1", elapp=SimpleNamespace(marked=set()))
    start = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    run = {"model": "tiny", "technique": "fp32", "family": "inference", "status": "ok",
           "started_at": start, "ended_at": start, "device": "cuda:0", "contended": True,
           "info": {"foreign_processes": [NEIGHBOUR], "foreign_pids": [4242]}}
    head = RunDetailScreen._head(screen, run)  # type: ignore[arg-type]
    assert "[b white on red] CONTENDED [/]" in head.splitlines()[0]
    assert head.splitlines()[-1] == "contended: yes — pid 4242 (python, 1.2 GiB) on gpu0"
    run.update(contended=None, info={"contended_note": "a CPU run: [no] GPU"})
    head = RunDetailScreen._head(screen, run)  # type: ignore[arg-type]
    assert "CONTENDED" not in head
    assert head.splitlines()[-1] == "contended: unknown — a CPU run: \\[no] GPU"  # escaped
    run.update(info={})
    assert "contended" not in RunDetailScreen._head(screen, run)  # nothing recorded
