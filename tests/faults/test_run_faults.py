"""Faults on the app side, injected through real files and processes: a fault loses no
finished step, event or sample, never touches another run's data or another process, never
leaves a run unsupervised, and always says what is missing and why (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efficientllm_tui.runs import dispatcher, ingest, queue, rundir, specs
from efficientllm_tui.store.db import Store
from profiling import home as homes
from tests.integration.conftest import Cli, stop_dispatcher

pytestmark = pytest.mark.timeout(180)
S = 1_000_000_000


def _events(run_dir: Path, events: list[dict[str, object]], raw: bytes = b"") -> None:
    text = "".join(json.dumps(e) + "\n" for e in events).encode()
    (run_dir / "events.jsonl").write_bytes(text + raw)


def _made(home: Path, technique: str = "fp32", **fields: object) -> Path:
    spec = specs.build_spec(model="tiny", technique=technique, device="cpu", steps=2, warmup=0,
                            **fields)  # type: ignore[arg-type]
    return rundir.prepare(spec, home)


def _finished(t0: int, metrics: object = (), info: object = None,
              window: tuple[object, object] | None = None) -> list[dict[str, object]]:
    w0, w1 = window or (t0 + S // 2, t0 + S)
    return [{"t_ns": t0, "kind": "started", "pid": 1, "host": "h", "device": "cpu",
             "sample_device": "cpu", "cpu_count": 2},
            {"t_ns": t0 + S // 2, "kind": "step", "step": 0, "phase": "measure",
             "latency_s": 0.25, "tokens": 8, "samples": 1},
            {"t_ns": t0 + S, "kind": "window", "name": "measure", "device": "cpu",
             "t0_ns": w0, "t1_ns": w1, "energy_j": None},
            {"t_ns": t0 + 2 * S, "kind": "result", "status": "ok",
             "metrics": list(metrics) if isinstance(metrics, (list, tuple)) else metrics,
             "info": info if info is not None else {}}]


def test_a_spec_naming_another_run_never_replaces_it(tmp_path: Path) -> None:
    home, store = tmp_path, Store(tmp_path / "db.duckdb")
    victim = _made(home)
    _events(victim, _finished(1_800_000_000 * S, [{"name": "al_s", "value": 0.25, "unit": "s",
                                                   "source": "runner"}]))
    ingest.ingest_run(store, victim, home)
    intruder = _made(home, technique="bf16")
    spec = json.loads((intruder / "spec.json").read_text())
    spec["run_id"] = victim.name  # a copied or edited spec.json
    (intruder / "spec.json").write_text(json.dumps(spec))
    _events(intruder, _finished(1_800_000_100 * S, [{"name": "al_s", "value": 99.0,
                                                     "unit": "s", "source": "runner"}]))
    done = dict(ingest.recover(store, home))
    assert done[intruder.name].startswith(f"skipped: {intruder}/spec.json names run "
                                          f"'{victim.name}', not its own dir")
    got = store.get_run(victim.name)
    assert got is not None and got["metrics"]["al_s"][0] == 0.25 and got["technique"] == "fp32"


def test_recover_stores_the_good_runs_beside_damaged_ones(tmp_path: Path) -> None:
    home, store = tmp_path, Store(tmp_path / "db.duckdb")
    t0 = 1_800_000_000 * S
    good = _made(home)
    _events(good, _finished(t0))
    bad_utf8 = _made(home, technique="bf16")
    _events(bad_utf8, _finished(t0), raw=b'{"t_ns": 5, "kind": "log", "message": "\xff\xfe"}\n')
    reversed_window = _made(home, technique="fp16")
    _events(reversed_window, _finished(t0, window=(t0 + S, t0 + S // 2)))
    words = _made(home, technique="int8")
    _events(words, _finished(t0, window=("soon", "later")))
    wrong_types = _made(home, technique="int4")
    events = _finished(t0, metrics={"not": "a list"}, info=["not", "a", "dict"])
    events[0]["pid"], events[1]["latency_s"] = "seven", "fast"
    _events(wrong_types, events)
    a_dir = _made(home, technique="w8a8")
    (a_dir / "events.jsonl").mkdir()
    done = dict(ingest.recover(store, home))
    assert done == {good.name: "ok", bad_utf8.name: "ok", reversed_window.name: "ok",
                    words.name: "ok", wrong_types.name: "ok", a_dir.name: "orphaned"}
    # what was damaged is said, the rest kept
    for run_dir in (reversed_window, words):
        notes = store.get_run(run_dir.name)["metric_notes"]  # type: ignore[index]
        assert "the measure window is malformed" in notes["amu"]
    row = store.get_run(wrong_types.name)
    assert row is not None and row["pid"] is None
    steps = store.steps(wrong_types.name).to_pylist()
    assert [(s["step"], s["latency_s"], s["tokens"]) for s in steps] == [(0, None, 8)]
    assert len(store.events(bad_utf8.name)) == 4  # the undecodable line alone is dropped
    assert "before its first event" in store.get_run(a_dir.name)["error_text"]  # type: ignore[index]


def test_a_reused_pid_is_not_a_running_runner(tmp_path: Path) -> None:
    home, store = tmp_path, Store(tmp_path / "db.duckdb")
    run_dir = _made(home)
    _events(run_dir, _finished(1_800_000_000 * S)[:2])  # started, one step, then gone
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (run_dir / "runner.pid").write_text(json.dumps(
            {"pid": stranger.pid, "create_time": 1.0}))  # the runner's start, long ago
        assert not rundir.runner_alive(run_dir)
        state = ingest.ingest_run(store, run_dir, home)
        assert state.status == "orphaned"
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_a_killed_runner_keeps_its_steps_and_says_how_it_ended(cli: Cli) -> None:
    cli.home.mkdir(parents=True, exist_ok=True)
    db = cli.home / "efficientllm.duckdb"
    spec = specs.build_spec(model="tiny", technique="fp32", device="cpu", steps=100000,
                            warmup=0, new_tokens=4, seq_len=8)
    run_dir = queue.enqueue(spec, cli.home, db)
    env = {**cli.env}
    d = subprocess.Popen([sys.executable, "-m", "efficientllm_tui.runs.dispatcher", "--home",
                          str(cli.home)], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while sum(e.kind == "step" for e in rundir.read_events(run_dir)[0]) < 5:
            assert time.monotonic() < deadline, "the run never took 5 steps"
            time.sleep(0.2)
        pid = rundir.runner_pid(run_dir)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not rundir.ingested_final(run_dir):
            assert time.monotonic() < deadline, "the killed run was never stored"
            time.sleep(0.2)
    finally:
        stop_dispatcher(cli.home)
        d.wait(timeout=20)
    store = Store(db)
    row = store.get_run(spec.run_id)
    assert row is not None and row["status"] == "orphaned"
    assert row["error_text"].startswith("runner killed by SIGKILL without a result after ")
    on_disk = [e for e in rundir.read_events(run_dir)[0] if e.kind == "step"]
    assert len(store.steps(spec.run_id)) == len(on_disk) >= 5  # no finished step lost


def test_private_files_are_this_users_only(cli: Cli) -> None:
    out = cli("run", "-m", "tiny", "-t", "fp32", "--device", "cpu", "--steps", "1",
              "--warmup", "0", "--json")
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    home = cli.home
    for path in (home, homes.runs_dir(home), homes.runs_dir(home) / run_id):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in [home / "efficientllm.duckdb", *(homes.runs_dir(home) / run_id).iterdir()]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_escape_sequences_in_input_never_reach_the_terminal(cli: Cli) -> None:
    out = cli("show", "\x1b[31mred\x1b]0;title\x07")
    assert out.returncode == 2
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr
    assert out.stderr.strip() == "efficientllm: error: no run '?[31mred?]0;title?'"
    # and any other message passes through one printable line
    from efficientllm_tui.cli import one_line

    assert one_line("bad \x1b[2J\nname") == "bad \\x1b[2J name"


def test_a_second_run_waits_for_the_first_before_its_start_up(cli: Cli, tmp_path: Path) -> None:
    """One measured run per device: the next one's runner starts only after the first is
    stored, so its heavy start-up never overlaps the first run's measured steps."""
    cli.home.mkdir(parents=True, exist_ok=True)
    db = cli.home / "efficientllm.duckdb"
    made = [specs.build_spec(model="tiny", technique=t, device="cpu", steps=3, warmup=0,
                             new_tokens=4, seq_len=8) for t in ("fp32", "bf16")]
    dirs = [queue.enqueue(s, cli.home, db, now_ns=i + 1) for i, s in enumerate(made)]
    dispatcher.ensure(cli.home)
    deadline = time.monotonic() + 120
    while not all(rundir.ingested_final(d) for d in dirs):
        assert time.monotonic() < deadline, "the two runs were not stored"
        time.sleep(0.3)
    first_end = rundir.read_events(dirs[0])[0][-1].t_ns
    second_spawn = json.loads((dirs[1] / rundir.LAUNCHER_FILE).read_text())["spawned_ns"]
    assert second_spawn >= first_end
    stop_dispatcher(cli.home)


def test_an_ingest_killed_mid_transaction_leaves_all_or_nothing(tmp_path: Path) -> None:
    """DuckDB's own promise, checked here: a store killed inside its transaction leaves the
    run either whole or absent (never half its samples), and the next recover completes it."""
    from profiling.daemon.spool import SpoolWriter
    from profiling.sample import Sample

    home = tmp_path
    t0 = 1_800_000_000 * S
    run_dir = _made(home)
    _events(run_dir, _finished(t0, window=(t0, t0 + 600 * S)) + [
        {"t_ns": t0 + 601 * S, "kind": "log", "message": "end"}])
    writer = SpoolWriter(homes.spool_dir(home))
    n = 200_000  # 10 Hz x 20,000 s would be a long run; here it only has to take a while
    for start in range(0, n, 20_000):
        writer.write_samples([Sample(t_ns=t0 + i * (600 * S // n), host="h", device="cpu",
                                     source="psutil", cpu_pct=50.0, rss_bytes=2**30,
                                     mem_total_bytes=2**34)
                              for i in range(start, start + 20_000)])
    writer.close()
    db = home / "db.duckdb"
    code = ("import sys; from pathlib import Path; from efficientllm_tui.runs import ingest; "
            "from efficientllm_tui.store.db import Store; "
            "ingest.recover(Store(Path(sys.argv[1])), Path(sys.argv[2]))")
    wal = db.with_name(db.name + ".wal")
    killed_inside = 0
    for delay_s in (0.0, 0.05, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(home)])
        deadline = time.monotonic() + 60
        while not wal.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # the write-ahead log appears when the transaction writes
        time.sleep(delay_s)
        inside = proc.poll() is None
        proc.kill()
        proc.wait()
        if rundir.ingested_final(run_dir):
            break  # it finished first on this machine: nothing more to kill
        killed_inside += inside
        stored = Store(db).samples(run_dir.name).num_rows if db.exists() else 0
        assert stored in (0, n), f"half a run stored: {stored} of {n} samples"
    assert killed_inside >= 1, "no kill landed inside the store"
    ingest.recover(Store(db), home)
    assert Store(db).samples(run_dir.name).num_rows == n


def test_a_daemon_killed_mid_run_is_replaced_and_the_hole_is_said(cli: Cli) -> None:
    from profiling.daemon import client

    cli.home.mkdir(parents=True, exist_ok=True)
    db = cli.home / "efficientllm.duckdb"
    spec = specs.build_spec(model="tiny", technique="fp32", device="cpu", steps=100000,
                            warmup=0, new_tokens=4, seq_len=8)
    run_dir = queue.enqueue(spec, cli.home, db)
    os.environ["EFFICIENTLLM_HOME"] = str(cli.home)
    try:
        dispatcher.ensure(cli.home)
        deadline = time.monotonic() + 90
        while sum(e.kind == "step" for e in rundir.read_events(run_dir)[0]) < 3:
            assert time.monotonic() < deadline, "the run never took 3 steps"
            time.sleep(0.2)
        first = client.daemon_status(cli.home)
        assert first is not None
        os.kill(int(first["pid"]), signal.SIGKILL)
        killed_ns = time.time_ns()
        deadline = time.monotonic() + 20
        while True:  # the dispatcher's watchdog starts a new one, watching the runner
            st = client.daemon_status(cli.home, timeout_s=0.5)
            if st is not None and st["pid"] != first["pid"]:
                break
            assert time.monotonic() < deadline, "no daemon replaced the killed one"
            time.sleep(0.2)
        time.sleep(2.0)  # let the new daemon sample the runner for a while
        assert queue.stop(cli.home, [spec.run_id])[0][1].startswith("stopping")
        deadline = time.monotonic() + 60
        while not rundir.ingested_final(run_dir):
            assert time.monotonic() < deadline, "the run was never stored"
            time.sleep(0.2)
    finally:
        os.environ.pop("EFFICIENTLLM_HOME", None)
        stop_dispatcher(cli.home)
    samples = Store(db).samples(spec.run_id, device="cpu").column("t_ns").to_pylist()
    assert any(t > killed_ns + S for t in samples), "the new daemon never sampled the runner"


def test_the_orphan_reason_is_what_happened_not_a_library_warning(tmp_path: Path) -> None:
    home, store = tmp_path, Store(tmp_path / "db.duckdb")
    quiet = _made(home)
    _events(quiet, _finished(1_800_000_000 * S)[:2])
    (quiet / "stderr.log").write_text(
        "/site-packages/torchao/__init__.py:96: UserWarning: Failed to load _C_mxfp8.so\n")
    loud = _made(home, technique="bf16")
    _events(loud, _finished(1_800_000_000 * S)[:2])
    (loud / "stderr.log").write_text("Traceback (most recent call last):\n  File x\n"
                                     "RuntimeError: CUDA error: an illegal memory access\n"
                                     "FutureWarning: something later\n")
    assert ingest.ingest_run(store, quiet, home).error_text == (
        "runner died without a result after step event")
    assert ingest.ingest_run(store, loud, home).error_text == (
        "runner died without a result after step event; stderr: RuntimeError: CUDA error: "
        "an illegal memory access")


def test_a_database_that_cannot_take_a_run_keeps_it_safe_until_it_can(cli: Cli) -> None:
    """The launcher no longer owns a run: when the database breaks after a run was queued,
    the run still goes, stays in its dir, and is stored once the database is usable."""
    cli.home.mkdir(parents=True, exist_ok=True)
    db = cli.home / "efficientllm.duckdb"
    spec = specs.build_spec(model="tiny", technique="fp32", device="cpu", steps=2, warmup=0,
                            new_tokens=4, seq_len=8)
    run_dir = queue.enqueue(spec, cli.home, db)
    db.write_bytes(b"this is not a duckdb file" * 100)  # damaged after the launch
    dispatcher.ensure(cli.home)
    deadline = time.monotonic() + 90
    while not any(e.kind == "result" for e in rundir.read_events(run_dir)[0]):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.3)
    time.sleep(1.0)
    assert not rundir.ingested_final(run_dir)  # not stored, not lost
    assert db.read_bytes().startswith(b"this is not a duckdb file")  # never overwritten
    db.unlink()  # the user moves the damaged file away
    out = cli("recover", "--json")
    assert out.returncode == 0, out.stderr
    assert {"run_id": spec.run_id, "status": "ok"} in json.loads(out.stdout)
    stop_dispatcher(cli.home)
