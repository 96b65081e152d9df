"""The runner's contention flow (runners/__main__.py): no process-list thread on CPU, a
thread through the run on a (fake NVML) GPU, the verdict in the result's info."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import runners.__main__ as runner_main
from profiling.backends import contention
from runners.families import base as fam
from runners.protocol import EVENTS_FILE, Event, RunResult, RunSpec
from runners.system import device as dev
from runners.system.eventlog import EventLog
from tests.unit import nvml_fake
from tests.unit.nvml_fake import GIB, Fake

autospec = nvml_fake.autospec  # fixtures, used by name
fake = nvml_fake.fake


class QuietFamily(fam.Family[fam.FamilyConfig]):
    """A family whose run does nothing but what the test hands it."""

    name = "inference"
    techniques = frozenset({"fp32"})
    during: Callable[[], None] = staticmethod(lambda: None)

    def run(self) -> RunResult:
        type(self).during()
        return RunResult(run_id=self.config.run_id, status="ok", info={"weights": "random"})


def _contention_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "contention" and t.is_alive()]


def _execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> RunResult:
    monkeypatch.setattr(dev, "resolve", lambda requested: device)
    monkeypatch.setattr(dev, "make_current", lambda d: None)
    monkeypatch.setattr(dev, "versions", lambda: {})
    monkeypatch.setattr(dev, "gpu_name", lambda d: None)
    monkeypatch.setattr(fam, "family_class", lambda name: QuietFamily)
    monkeypatch.setattr(runner_main, "_watch", lambda *a: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run_dir = tmp_path / "home" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    spec = RunSpec(run_id="r1", family="inference", technique="fp32", model="tiny",
                   device=device)
    (run_dir / "spec.json").write_text(spec.to_json())
    log = EventLog(run_dir / EVENTS_FILE)
    try:
        assert runner_main.execute(run_dir, log) == 0
    finally:
        log.close()
    events = [Event.from_json(x) for x in (run_dir / EVENTS_FILE).read_text().splitlines()]
    return RunResult.from_dict(events[-1].fields)


def test_cpu_run_is_unknown_and_starts_no_thread(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    monkeypatch.setattr(contention, "watch_device", lambda *a, **k: started.append(a))
    monkeypatch.setattr(QuietFamily, "during",
                        staticmethod(lambda: started.extend(_contention_threads())))
    info = _execute(tmp_path, monkeypatch, "cpu").info
    assert started == []
    assert (info["contended"], info["contended_note"], info["foreign_processes"],
            info["foreign_pids"]) == (None, "a CPU run: there is no GPU process list", None, [])
    assert info["weights"] == "random"  # the family's own info is kept


def test_gpu_run_reads_through_the_run_and_catches_a_passing_neighbour(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: Fake) -> None:
    monkeypatch.setattr(contention, "DEFAULT_INTERVAL_S", 0.01)
    g = fake.gpus[0]
    me, neighbour = os.getpid(), os.getppid()  # the parent: visible, not our descendant
    g.pids, g.proc_mem = [me], {me: 2 * GIB, neighbour: GIB}
    calls = fake.m.nvmlDeviceGetComputeRunningProcesses

    def during() -> None:
        assert len(_contention_threads()) == 1
        g.pids = [me, neighbour]
        n = calls.call_count
        deadline = time.monotonic() + 5
        while calls.call_count < n + 2:  # read by the thread, not at either end
            assert time.monotonic() < deadline
            time.sleep(0.005)
        g.pids = [me]
        n = calls.call_count
        while calls.call_count < n + 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)

    monkeypatch.setattr(QuietFamily, "during", staticmethod(during))
    info = _execute(tmp_path, monkeypatch, "cuda:0").info
    assert _contention_threads() == []
    assert info["contended"] is True and info["foreign_pids"] == [neighbour]
    (f,) = info["foreign_processes"]
    assert (f["pid"], f["used_gpu_memory_bytes"], f["name"], f["device"]) == \
        (neighbour, GIB, psutil.Process(neighbour).name(), "gpu0")
    assert info["contention_reads"] >= 5


def test_gpu_run_without_nvml_is_unknown_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: Fake) -> None:
    fake.init_error = nvml_fake.REAL.NVML_ERROR_DRIVER_NOT_LOADED
    monkeypatch.setattr(QuietFamily, "during", staticmethod(lambda: None))
    info = _execute(tmp_path, monkeypatch, "cuda:0").info
    assert info["contended"] is None and info["foreign_processes"] is None
    assert info["contended_note"].startswith("the GPU's process list cannot be read: "
                                             "NvmlUnavailable: the NVIDIA kernel driver")
    assert _contention_threads() == []
