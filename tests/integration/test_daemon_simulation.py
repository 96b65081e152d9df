"""A daemon started with `--simulate-gpu` lends its simulated GPU only to the runs that asked
for it: plain clients, plain runs and the app's live feed never get it (DESIGN.md section 4).

Real detached daemons in a temporary data dir with a short idle exit; every test stops what
it started (the `home` fixture of test_daemon, then the CLI fixture's `daemon stop`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profiling.daemon import client
from profiling.daemon.client import DaemonError, pid_alive
from profiling.sample import Sample

from .conftest import Cli
from .test_daemon import IDLE_S, home, wait_for

pytestmark = pytest.mark.timeout(90)
_ = home  # a fixture, used by name


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in runner process (killed at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def _live(home: Path, n: int) -> list[Sample]:
    """The next `n` live samples of every device."""
    with client.subscribe(home, since_ns=None, timeout_s=3) as sub:
        return [s for _, s in zip(range(n), sub, strict=False)]


def _status(home: Path) -> dict[str, Any]:
    st = client.daemon_status(home)
    assert st is not None
    return st


def test_simulated_gpu_only_while_a_simulated_run_is_watched(
        home: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EFFICIENTLLM_SIMULATE_GPU", raising=False)
    sim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        info = client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S, simulate_gpu=True)
        assert info.simulated and _status(home)["simulated_runs"] == []
        # Nobody asked for simulation yet: the host alone is streamed.
        assert {s.device for s in _live(home, 6)} == {"cpu"}
        # A plain runner watched by this daemon does not switch the simulated GPU on.
        assert client.watch(home, sleeper.pid, "run-plain")
        assert {s.device for s in _live(home, 6)} == {"cpu"}
        assert client.watch(home, sim.pid, "run-sim", simulate_gpu=True)
        assert _status(home)["simulated_runs"] == ["run-sim"]
        got = _live(home, 12)
        assert {(s.device, s.source) for s in got} == {("cpu", "psutil"), ("gpu0", "simulated")}
        # A plain client while the simulated run goes on keeps its daemon (it is not killed).
        assert client.ensure_daemon(home).pid == info.pid
        with pytest.raises(DaemonError, match="runs simulated GPUs"):
            client.ensure_daemon(home, simulate_gpu=False)  # real asked for: refused, not mixed
    finally:
        sim.kill()
        sim.wait()
    # The simulated run is over: at once out of `simulated_runs`, and no simulated sample
    # is streamed once its pid is forgotten (housekeeping, once a second).
    assert _status(home)["simulated_runs"] == []
    wait_for(lambda: [w["pid"] for w in _status(home)["watched"]] == [sleeper.pid],
             5, "the simulated runner to be forgotten")
    assert {s.device for s in _live(home, 6)} == {"cpu"}
    # A plain client now gets a real daemon in its place.
    real = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert real.pid != info.pid and real.launched and not real.simulated
    assert not pid_alive(info.pid)
    assert "simulated" not in {s.source for s in _live(home, 6)}


def test_watch_refuses_a_non_boolean_simulate_flag(home: Path,
                                                   sleeper: subprocess.Popen[bytes]) -> None:
    client.ensure_daemon(home, idle_exit_s=IDLE_S, simulate_gpu=True)
    reply = client.request(home, {"op": "watch", "pid": sleeper.pid, "simulate_gpu": "yes"})
    assert reply == {"ok": False, "error": "simulate_gpu must be true or false"}
    reply = client.request(home, {"op": "watch", "pid": sleeper.pid, "simulate_gpu": True})
    assert reply is not None and reply["ok"] is True and reply["simulating"] is True


@pytest.mark.slow
def test_plain_run_after_a_simulated_run_gets_no_simulated_data(cli: Cli) -> None:
    sim = cli.json("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--simulate-gpu",
                   "--steps", "2", "--warmup", "0", "--json")
    assert sim["simulated"] is True and sim["sources"]["amu"] == "simulated"
    sim_daemon = cli.json("daemon", "status", "--json")
    assert sim_daemon["simulated"] is True  # it outlives its run (idle exit 20 s)
    plain = cli.json("run", "-m", "tiny", "-t", "fp32", "--device", "cpu",
                     "--steps", "2", "--warmup", "0", "--json")
    assert plain["simulated"] is False
    # psutil, or (a starved daemon on a loaded machine, a 0.1 s window) none with its reason:
    # never the simulated card's numbers
    for name in ("amu", "pcu"):
        assert plain["sources"][name] == "psutil" or (
            plain["sources"][name] == "none" and "cpu" in plain["notes"][name]), name
    assert "simulated" not in plain["sources"].values()
    rows = cli.json("sql", "select r.run_id, s.device, s.source, count(*) > 0 AS n "
                    "from samples s join runs r using (run_id) group by all order by all",
                    "--format", "json")
    assert {(r["run_id"], r["device"], r["source"]) for r in rows} == {
        (sim["run_id"], "cpu", "psutil"), (sim["run_id"], "gpu0", "simulated"),
        (plain["run_id"], "cpu", "psutil")}
    st = cli.json("daemon", "status", "--json")  # the plain run replaced it with a real one
    assert st["simulated"] is False and st["pid"] != sim_daemon["pid"]
    assert cli.json("runs", "--json")[0]["simulated"] is False
