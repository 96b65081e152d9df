"""Daemon configuration and backend states, in process (no detached daemon)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiling.backends.base import BACKEND_FACTORIES, Backend, BackendUnavailable
from profiling.daemon.config import AUTO_BACKENDS, DaemonConfig, parse_args
from profiling.daemon.service import Daemon
from profiling.sample import Sample


def test_parse_args_backends_and_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EFFICIENTLLM_SIMULATE_GPU", raising=False)
    cfg = parse_args(["--home", "/tmp/x"])
    assert cfg.backends == AUTO_BACKENDS == ("psutil", "nvml") and not cfg.simulate_gpu
    assert cfg.gpm_interval_s == 0.1 and cfg.rate_hz == 10.0
    cfg = parse_args(["--home", "/tmp/x", "--backends", "psutil,auto", "--simulate-gpu",
                      "--seed", "4", "--sim-devices", "2", "--gpm-interval-s", "0.2"])
    assert cfg.backends == ("psutil", "nvml") and cfg.simulate_gpu
    assert (cfg.seed, cfg.sim_devices, cfg.gpm_interval_s) == (4, 2, 0.2)
    monkeypatch.setenv("EFFICIENTLLM_SIMULATE_GPU", "1")
    assert parse_args(["--home", "/tmp/x"]).simulate_gpu
    assert not parse_args(["--home", "/tmp/x", "--no-simulate-gpu"]).simulate_gpu
    for bad in (["--gpm-interval-s", "0.05"], ["--sim-devices", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--home", "/tmp/x", *bad])


class Lost(Backend):
    name = "nvml"

    def __init__(self, **kw: object) -> None:
        self.n = 0

    def devices(self) -> list[str]:
        return ["gpu0", "gpu1"]

    def sample(self, now_ns: int) -> list[Sample]:
        self.n += 1
        return [Sample(t_ns=now_ns, host="h", device="gpu0", source="nvml", power_w=100.0)]

    def lost_devices(self) -> list[str]:
        return ["gpu1"]

    def status(self) -> dict[str, object]:
        return {"driver": "test"}


def unavailable(**kw: object) -> Backend:
    raise BackendUnavailable("NVML shared library not found (test)")


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ellm-") as d:
        yield Path(d)


def run_daemon(home: Path, **cfg: object) -> dict[str, object]:
    daemon = Daemon(DaemonConfig(home=home, idle_exit_s=0, **cfg))  # type: ignore[arg-type]
    assert daemon.acquire_lock()
    daemon.start()
    try:
        time.sleep(0.25)
        return daemon.status()
    finally:
        daemon.request_stop("test")
        daemon.shutdown()


def test_status_names_each_backend_state(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKEND_FACTORIES, "nvml", f"{__name__}:unavailable")
    st = run_daemon(home)
    assert st["backends"] == ["psutil"] and st["simulated"] is False
    assert "nvml: unavailable: NVML shared library not found (test)" in st["backend_notes"]
    assert st["backend_states"]["psutil"]["state"] == "ok"  # type: ignore[index]

    monkeypatch.setitem(BACKEND_FACTORIES, "nvml", f"{__name__}:Lost")
    st = run_daemon(home)
    nv = st["backend_states"]["nvml"]  # type: ignore[index]
    assert nv["state"] == "degraded" and nv["reason"] == "lost gpu1" and nv["driver"] == "test"
    assert st["lost_devices"] == ["gpu1"] and st["devices"] == ["cpu", "gpu0", "gpu1"]


def test_simulation_replaces_nvml(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKEND_FACTORIES, "nvml", f"{__name__}:Lost")
    st = run_daemon(home, simulate_gpu=True, sim_devices=2, seed=3)
    assert st["simulated"] is True and st["backends"] == ["psutil", "simulated"]
    assert st["devices"] == ["cpu", "gpu0", "gpu1"]
    assert st["backend_states"]["nvml"]["state"] == "skipped"  # type: ignore[index]
    assert any("simulated GPUs replace real ones" in n
               for n in st["backend_notes"])  # type: ignore[attr-defined]
    assert st["samples_taken"] > 0  # type: ignore[operator]
