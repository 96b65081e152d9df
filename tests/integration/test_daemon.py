"""The profiling daemon as a real detached process in a temporary data dir.

Every test stops what it started (finalizer: stop request, then SIGKILL by pid) and gives
the daemon a short idle exit as a second guard.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiling import home as home_mod
from profiling.daemon import client
from profiling.daemon.client import DaemonError, pid_alive
from profiling.daemon.spool import list_segments, read_samples
from tests.faults.daemon_rig import daemons_of, wait_for

pytestmark = pytest.mark.timeout(60)

IDLE_S = 3.0


@pytest.fixture
def home() -> Iterator[Path]:
    # A short path under /tmp keeps the socket path well within sun_path.
    with tempfile.TemporaryDirectory(prefix="ellm-") as d:
        h = Path(d) / "home"
        yield h
        try:
            client.stop_daemon(h, timeout_s=3)
        except DaemonError:
            pass
        for proc in daemons_of(h):  # anything left (started by this test): kill by pid
            proc.kill()
        wait_for(lambda: not daemons_of(h), 5, "daemons to exit")


def test_status_socket_subscribe_spool_watch_and_stop(home: Path) -> None:
    info = client.ensure_daemon(home, rate_hz=10, idle_exit_s=IDLE_S)
    # On a GPU machine NVML adds its devices; the host backend is always there.
    assert info.launched and "cpu" in info.devices and "psutil" in info.backends
    assert not info.simulated
    sock = home_mod.socket_path(home)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert (home / home_mod.DAEMON_PID_FILE).read_text().strip() == str(info.pid)
    st = client.daemon_status(home)
    assert st is not None
    for key in ("pid", "rate_hz", "started_ns", "devices", "backends", "watched", "subscribers",
                "spool_dir", "samples_taken"):
        assert key in st
    assert st["spool_dir"] == str(home / "spool") and st["rate_hz"] == 10

    # a second ensure finds it and starts nothing
    again = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert again.pid == info.pid and not again.launched

    assert client.watch(home, os.getpid(), "run-x")
    st = client.daemon_status(home)
    assert st is not None and [w["pid"] for w in st["watched"]] == [os.getpid()]
    assert not client.watch(home, 2**22 + 12345, "ghost")  # no such process

    received = []
    with client.subscribe(home, since_ns=0, devices=["cpu"], timeout_s=3) as sub:
        assert sub.replay >= 0
        for s in sub:
            received.append((s, time.time_ns()))
            if len(received) >= 15 + sub.replay:
                break
        assert client.daemon_status(home)["subscribers"] == 1  # type: ignore[index]
    live = [s for s, _ in received[-12:]]
    assert all(s.source == "psutil" and s.device == "cpu" for s, _ in received)
    assert any(s.rss_bytes for s in live)  # our own process tree is watched
    gaps = sorted(b.t_ns - a.t_ns for a, b in zip(live, live[1:], strict=False))
    assert 80e6 < gaps[len(gaps) // 2] < 120e6  # ~10 Hz
    assert all(recv - s.t_ns < 500e6 for s, recv in received[-5:])

    assert client.unwatch(home, os.getpid())
    segs = list_segments(home / "spool")
    assert segs and segs[0].path.stat().st_size > 0
    assert len(read_samples(home / "spool", 0, time.time_ns())) >= 15

    assert client.stop_daemon(home)
    assert not pid_alive(info.pid)
    assert not sock.exists() and not (home / home_mod.DAEMON_PID_FILE).exists()
    assert client.daemon_status(home) is None
    assert client.stop_daemon(home) is False
    assert not client.watch(home, os.getpid()) and not client.unwatch(home, os.getpid())
    with pytest.raises(DaemonError):
        client.subscribe(home)


def test_concurrent_launches_leave_one_daemon(home: Path) -> None:
    infos: list[client.DaemonInfo] = []
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            infos.append(client.ensure_daemon(home, idle_exit_s=IDLE_S, timeout_s=10))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({i.pid for i in infos}) == 1
    # A process launching at the same time from outside this one.
    code = ("import sys; from profiling.daemon import client; "
            "print(client.ensure_daemon(sys.argv[1], idle_exit_s=3).pid)")
    out = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True,
                         text=True, timeout=20, stdin=subprocess.DEVNULL, check=True)
    assert int(out.stdout) == infos[0].pid
    wait_for(lambda: len(daemons_of(home)) == 1, 10, "losing launchers to exit")
    assert daemons_of(home)[0].pid == infos[0].pid


def test_sigkill_keeps_spooled_samples_and_stale_socket_is_replaced(home: Path) -> None:
    t0 = time.time_ns()
    info = client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S)
    wait_for(lambda: (client.daemon_status(home) or {}).get("samples_taken", 0) >= 10, 5,
             "samples")
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(info.pid), 5, "the daemon to die")
    assert home_mod.socket_path(home).exists()  # left behind
    assert client.daemon_status(home) is None  # a stale socket is no daemon
    got = read_samples(home / "spool", t0, time.time_ns())
    assert len(got) >= 10 and all(s.source == "psutil" for s in got)

    info2 = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert info2.pid != info.pid and info2.launched
    assert client.daemon_status(home)["pid"] == info2.pid  # type: ignore[index]
    assert "removing stale socket" in (home / home_mod.DAEMON_LOG_FILE).read_text()
    assert client.stop_daemon(home)
    # both daemons' samples are in the spool
    assert len(read_samples(home / "spool", t0, time.time_ns())) > len(got)


def test_sigterm_shuts_down_cleanly(home: Path) -> None:
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    wait_for(lambda: (client.daemon_status(home) or {}).get("samples_taken", 0) >= 3, 5,
             "samples")
    os.kill(info.pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(info.pid), 5, "the daemon to stop")
    assert not home_mod.socket_path(home).exists()
    assert not (home / home_mod.DAEMON_PID_FILE).exists()
    log = (home / home_mod.DAEMON_LOG_FILE).read_text()
    assert "stopping: SIGTERM" in log and "Traceback" not in log


def test_idle_exit_waits_for_watched_runner(home: Path) -> None:
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        info = client.ensure_daemon(home, idle_exit_s=1.0)
        assert client.watch(home, runner.pid, "run-idle")
        time.sleep(2.2)
        assert pid_alive(info.pid), "exited while a watched runner was alive"
    finally:
        runner.kill()
        runner.wait()
    wait_for(lambda: not pid_alive(info.pid), 5, "idle exit")
    assert not home_mod.socket_path(home).exists()
    log = (home / home_mod.DAEMON_LOG_FILE).read_text()
    assert "has exited" in log and "idle for 1 s" in log


def test_protocol_errors(home: Path) -> None:
    client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert client.request(home, {"op": "nope"})["ok"] is False  # type: ignore[index]
    reply = client.request(home, {"op": "watch", "pid": "12"})
    assert reply is not None and "positive integer" in reply["error"]
    reply = client.request(home, {"op": "subscribe", "since_ns": -1})
    assert reply is not None and reply["ok"] is False


def test_unwritable_spool_keeps_sampling_and_logs_once(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "spool").write_text("a file where the spool dir should be")
    client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S)
    with client.subscribe(home, since_ns=None, timeout_s=3) as sub:
        got = [s for _, s in zip(range(10), sub, strict=False)]
    assert len(got) == 10  # sampling and streaming go on
    st = client.daemon_status(home)
    assert st is not None and st["spool"]["failing"] and st["spool"]["held"] >= 10
    log = (home / home_mod.DAEMON_LOG_FILE).read_text()
    assert log.count("spool: cannot write") == 1
    assert client.stop_daemon(home)


def test_simulated_gpu_daemon_streams_simulated_samples(home: Path) -> None:
    run_dir = home / "runs" / "run-sim"
    run_dir.mkdir(parents=True)
    now = time.time_ns()
    (run_dir / "events.jsonl").write_text(
        json.dumps({"t_ns": now - 10**9, "kind": "started", "device": "cuda:0"}) + "\n"
        + json.dumps({"t_ns": now - 10**9, "kind": "phase", "name": "measure"}) + "\n")
    info = client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S, simulate_gpu=True)
    assert info.simulated and info.devices == ("cpu", "gpu0")
    st = client.daemon_status(home)
    assert st is not None and st["simulated"] is True
    assert any(n.startswith("nvml: skipped") for n in st["backend_notes"])
    assert client.watch(home, os.getpid(), "run-sim", simulate_gpu=True)
    with client.subscribe(home, since_ns=None, devices=["gpu0"], timeout_s=3) as sub:
        got = [s for _, s in zip(range(10), sub, strict=False)]
    assert len(got) == 10 and all(s.source == "simulated" and s.device == "gpu0" for s in got)
    assert all(s.power_w is not None and s.power_w > 400 for s in got[-3:])  # measuring
    # asking for real GPUs from a simulating daemon is refused, not mixed
    with pytest.raises(DaemonError, match="runs simulated GPUs"):
        client.ensure_daemon(home, simulate_gpu=False)
    assert client.stop_daemon(home)


def test_real_daemon_refuses_to_simulate(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EFFICIENTLLM_SIMULATE_GPU", raising=False)
    info = client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert not info.simulated and "cpu" in info.devices
    st = client.daemon_status(home)
    assert st is not None and {"psutil", "nvml"} <= set(st["backend_states"])
    with pytest.raises(DaemonError, match="real GPU sampling"):
        client.ensure_daemon(home, simulate_gpu=True)
    monkeypatch.setenv("EFFICIENTLLM_SIMULATE_GPU", "1")
    with pytest.raises(DaemonError, match="real GPU sampling"):
        client.ensure_daemon(home)
    monkeypatch.delenv("EFFICIENTLLM_SIMULATE_GPU")
    assert client.ensure_daemon(home).pid == info.pid  # no preference: whatever runs
