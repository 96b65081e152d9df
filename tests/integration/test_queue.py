"""The durable queue end to end: a batch outlives every terminal and a killed dispatcher, `stop`
works on queued and running runs, and broken queue entries cost nothing else (DESIGN.md 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efficientllm_tui.runs import dispatcher, queue, rundir
from tests.integration.conftest import Cli, stop_dispatcher

pytestmark = pytest.mark.timeout(240)

SWEEP = """
[defaults]
device = "cpu"
steps = {steps}
warmup = 0
new_tokens = 4
seq_len = 16

[[matrix]]
models = ["tiny"]
techniques = {techniques}
"""


def _sweep_file(tmp_path: Path, techniques: list[str], steps: int = 2) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(steps=steps, techniques=json.dumps(techniques)))
    return path


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _runs_dir(home: Path) -> Path:
    return home / "runs"


def _stored(cli: Cli) -> dict[str, str]:
    out = cli("sql", "select run_id, status from runs order by run_id", "--format", "json")
    if out.returncode != 0:  # no database yet
        return {}
    return {r["run_id"]: r["status"] for r in json.loads(out.stdout)}


def _until_stored(cli: Cli, n: int, timeout_s: float,
                  ok: bool = False) -> dict[str, str]:
    """The stored statuses once `n` runs are stored in a final state (all `ok` if asked)."""
    def done() -> dict[str, str] | None:
        s = {r: st for r, st in _stored(cli).items() if st not in ("running", "queued")}
        if len(s) == n and (not ok or set(s.values()) == {"ok"}):
            return s
        return None
    return _wait(done, timeout_s, f"{n} runs stored" + (" ok" if ok else ""))


def _started(home: Path) -> list[Path]:
    return [d for d in sorted(_runs_dir(home).iterdir())
            if any(e.kind == "started" for e in rundir.read_events(d)[0])] \
        if _runs_dir(home).is_dir() else []


def _runner_pids(home: Path) -> list[int]:
    pids = []
    for d in rundir.iter_dirs(home):
        pid, created = rundir.runner_process(d)
        if rundir.pid_alive(pid, created):
            pids.append(pid)  # type: ignore[arg-type]
    return pids


def _all_quiet(home: Path) -> bool:
    return not queue.snapshot(home) and not _runner_pids(home) \
        and dispatcher.running_pid(home) is None


@pytest.mark.slow
def test_a_sweep_outlives_its_terminal(cli: Cli, tmp_path: Path) -> None:
    """Start a 4-pair sweep with --follow in a terminal session, kill the whole session
    (what a dropped SSH connection does) after the first pair started: all 4 are stored,
    the queue is empty and no process is left."""
    sweep = _sweep_file(tmp_path, ["fp32", "bf16", "fp16", "int8"])
    if shutil.which("tmux"):
        sock = str(tmp_path / "tmux.sock")
        cmd = " ".join([sys.executable, "-m", "efficientllm_tui.cli", "sweep", str(sweep),
                        "--follow"])
        env_args = [f"{k}={v}" for k, v in cli.env.items() if k.startswith("EFFICIENTLLM")]
        subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "120", "-y", "30",
                        "env", *env_args, *cmd.split()], check=True, env=cli.env)

        def kill() -> None:
            subprocess.run(["tmux", "-S", sock, "kill-server"], check=False)
    else:  # the same through a process group of its own, hung up and killed
        proc = subprocess.Popen([sys.executable, "-m", "efficientllm_tui.cli", "sweep",
                                 str(sweep), "--follow"], env=cli.env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def kill() -> None:
            os.killpg(proc.pid, signal.SIGHUP)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    _wait(lambda: _started(cli.home), 60, "the first pair to start")
    kill()
    stored = _until_stored(cli, 4, 150, ok=True)
    assert len(stored) == 4
    _wait(lambda: _all_quiet(cli.home), 30, "no queue, runner or dispatcher left")
    sweeps = list((cli.home / "sweeps").glob("*.json"))
    assert len(sweeps) == 1 and len(json.loads(sweeps[0].read_text())["specs"]) == 4
    # every stored run names the sweep that queued it (schema 4: runs.sweep_id)
    rows = cli.json("sql", "SELECT DISTINCT sweep_id FROM runs", "--format", "json")
    assert rows == [{"sweep_id": sweeps[0].stem}]


@pytest.mark.slow
def test_a_killed_dispatcher_is_replaced_and_loses_nothing(cli: Cli, tmp_path: Path) -> None:
    out = cli("sweep", str(_sweep_file(tmp_path, ["fp32", "bf16", "int8"])), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    first = _wait(lambda: _started(cli.home), 60, "the first pair to start")[0]
    pid = dispatcher.running_pid(cli.home)
    assert pid is not None and pid > 0
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: dispatcher.running_pid(cli.home) is None, 10, "the dispatcher to die")
    # The running pair goes on without it; the others wait on disk.
    assert queue.snapshot(cli.home), "the queue emptied itself without a dispatcher"
    assert cli("queue").returncode == 0
    # Whoever comes next (here `recover`) starts a new dispatcher, which resumes.
    assert cli("recover").returncode == 0
    stored = _until_stored(cli, 3, 150, ok=True)
    assert set(stored) == set(doc["run_ids"]) and first.name in stored
    _wait(lambda: _all_quiet(cli.home), 30, "no queue, runner or dispatcher left")
    # Each run was stored once: one ingested marker, events unchanged since.
    assert all(rundir.ingested_final(_runs_dir(cli.home) / r) for r in stored)


@pytest.mark.slow
def test_stop_a_running_and_a_queued_run(cli: Cli, tmp_path: Path) -> None:
    out = cli("sweep", str(_sweep_file(tmp_path, ["fp32", "bf16"], steps=4000)), "--json")
    running, waiting = json.loads(out.stdout)["run_ids"]
    _wait(lambda: any(e.kind == "step" for e in rundir.read_events(
        _runs_dir(cli.home) / running)[0]), 90, "the first run to take steps")
    rows = cli.json("queue", "--json")
    assert [(r["run_id"], r["state"]) for r in rows] == [(running, "running"),  # type: ignore[index,union-attr]
                                                          (waiting, "waiting")]
    out = cli("stop", waiting[:-3], running)  # a unique prefix works too
    assert out.returncode == 0, out.stderr
    assert f"{waiting}: removed from the queue" in out.stdout
    assert f"{running}: stopping (SIGTERM to pid" in out.stdout
    stored = _until_stored(cli, 2, 60)
    assert stored == {running: "cancelled", waiting: "cancelled"}
    show = cli.json("show", waiting, "--json")
    assert show["error_text"] == "cancelled"  # type: ignore[index]
    assert cli("stop", "--all").stdout.strip() == "nothing queued or running"
    bad = cli("stop", "nosuchrun")
    assert bad.returncode == 2 and bad.stderr.strip() == "efficientllm: error: no run 'nosuchrun'"


def test_broken_queue_entries_cost_nothing_else(cli: Cli, tmp_path: Path) -> None:
    """A corrupt queue entry, a spec that no longer validates and a run dir deleted while
    queued: each is reported, the good run beside them is stored."""
    from efficientllm_tui.runs import specs

    home = cli.home
    home.mkdir(parents=True, exist_ok=True)
    db = home / "efficientllm.duckdb"
    made = [specs.build_spec(model="tiny", technique=t, device="cpu", steps=1, warmup=0,
                             new_tokens=2, seq_len=8) for t in ("fp32", "bf16", "fp16", "int8")]
    dirs = [queue.enqueue(s, home, db, now_ns=i + 1) for i, s in enumerate(made)]
    (dirs[0] / queue.QUEUE_FILE).write_text("{not json")
    spec = json.loads((dirs[1] / "spec.json").read_text())
    spec["params"] = {"engine": "warp"}
    (dirs[1] / "spec.json").write_text(json.dumps(spec))
    shutil.rmtree(dirs[2])
    assert dispatcher.ensure(home)
    stored = _until_stored(cli, 3, 90)
    assert stored == {made[0].run_id: "failed", made[1].run_id: "failed",
                      made[3].run_id: "ok"}
    errors = {r["run_id"]: r["error_text"] for r in cli.json(  # type: ignore[union-attr]
        "sql", "select run_id, error_text from runs", "--format", "json")}
    assert errors[made[0].run_id].startswith("not started: corrupt queue entry:")
    assert errors[made[1].run_id] == ("not started: unknown engine 'warp' (choose from auto, "
                                      "loop, eager, static, graph, compile, fused)")
    _wait(lambda: _all_quiet(home), 30, "no queue, runner or dispatcher left")


def test_one_dispatcher_per_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "EFFICIENTLLM_HOME": str(home), "EFFICIENTLLM_DISPATCHER_IDLE_S": "3"}
    procs = [subprocess.Popen([sys.executable, "-m", "efficientllm_tui.runs.dispatcher",
                               "--home", str(home)], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(4)]
    try:
        _wait(lambda: dispatcher.running_pid(home), 20, "a dispatcher")
        time.sleep(1.0)
        alive = [p for p in procs if p.poll() is None]
        assert len(alive) == 1, "more than one dispatcher holds the host"
        assert dispatcher.running_pid(home) == alive[0].pid
    finally:
        stop_dispatcher(home)
        for p in procs:
            p.wait(timeout=10)


def test_enqueue_on_a_full_disk_leaves_no_half_made_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from efficientllm_tui.errors import BadInput
    from efficientllm_tui.runs import specs

    spec = specs.build_spec(model="tiny", technique="fp32", device="cpu", steps=1, warmup=0)
    real = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.startswith(queue.QUEUE_FILE):
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(BadInput, match="^cannot queue run .*: No space left on device$"):
        queue.enqueue(spec, tmp_path, tmp_path / "db.duckdb")
    assert list((tmp_path / "runs").iterdir()) == []
