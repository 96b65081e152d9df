"""`python -m runners RUN_DIR` as a real subprocess on the tiny model, on CPU."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runners.protocol import EVENTS_FILE, PID_FILE, Event, RunResult, RunSpec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(seq_len=32, new_tokens=16, steps=4, warmup=2)
"""A run small enough for seconds on two cores, big enough to have every event."""
METRICS = {
    "al_s": "s", "al_p50_s": "s", "al_p90_s": "s", "al_p99_s": "s", "ttft_s": "s",
    "tpot_s": "s", "it": "tokens/s", "tokens_per_s": "tokens/s", "energy_j": "J",
    "aec_w": "W", "j_per_token": "J/token", "peak_allocated_gib": "GiB",
    "peak_reserved_gib": "GiB", "total_params": "params", "weight_bytes": "bytes",
    "mfu": "fraction", "eval_ppl": "ppl",
}


@dataclass
class Run:
    run_dir: Path
    proc: subprocess.Popen[bytes]

    def events(self) -> list[Event]:
        path = self.run_dir / EVENTS_FILE
        if not path.exists():
            return []
        return [Event.from_json(line) for line in path.read_text().splitlines()]

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 30) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if pred(e):
                    return e
            assert self.proc.poll() is None, f"runner exited {self.proc.returncode}: {self.err}"
            time.sleep(0.05)
        raise AssertionError(f"no such event within {timeout}s: {[e.kind for e in self.events()]}")

    @property
    def err(self) -> str:
        return (self.run_dir / "stderr.log").read_text()


def launch(home: Path, run_id: str, **spec: object) -> Run:
    """Write runs/<run_id>/spec.json under `home` and start the runner on it, detached."""
    fields: dict[str, object] = dict(run_id=run_id, family="inference", technique="fp32",
                                     model="tiny", device="cpu")
    fields.update(spec)
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(RunSpec(**fields).to_json())  # type: ignore[arg-type]
    env = dict(os.environ, EFFICIENTLLM_HOME=str(home))
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return Run(run_dir, proc)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, int]]:
    """fp32, bf16, fp16 and the generate() baseline, run at once (a data dir, so a lock, each)."""
    cases = {"fp32": {}, "bf16": {"technique": "bf16"}, "fp16": {"technique": "fp16"},
             "eager": {"params": {"engine": "eager"}}}
    runs = {}
    for name, extra in cases.items():
        home = tmp_path_factory.mktemp(name)
        params = {"threads": 1, **extra.pop("params", {})}  # type: ignore[dict-item]
        runs[name] = launch(home, f"run-{name}", **SMALL, params=params, **extra)
    return {name: (run, run.wait(120)) for name, run in runs.items()}


@pytest.mark.parametrize("case", ["fp32", "bf16", "fp16", "eager"])
def test_run_emits_every_event_and_metric(finished: dict[str, tuple[Run, int]],
                                          case: str) -> None:
    run, code = finished[case]
    events = run.events()
    if case == "fp16" and code == 1 and events[-1].get("type") == "unsupported":
        pytest.skip(f"fp16 unsupported here: {events[-1].get('message')}")
    assert code == 0, run.err
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "error" not in kinds

    started = events[0]
    assert started.get("pid") == run.proc.pid and started.get("device") == "cpu"
    assert set(started.get("versions")) >= {"torch", "transformers", "peft", "optimum-quanto",
                                            "cuda", "driver"}
    assert started.get("versions")["torch"]
    pid_file = (run.run_dir / PID_FILE).read_text()
    assert f'"pid": {run.proc.pid}' in pid_file and "create_time" in pid_file

    phases = [e.get("name") for e in events if e.kind == "phase"]
    assert phases == ["load", "warmup", "measure", "eval", "done"]
    steps = [e for e in events if e.kind == "step"]
    assert [(e.get("phase"), e.get("step")) for e in steps] == [
        ("warmup", 0), ("warmup", 1), ("measure", 0), ("measure", 1), ("measure", 2),
        ("measure", 3)]
    for e in steps:
        assert e.get("latency_s") > 0 and 0 < e.get("ttft_s") <= e.get("latency_s")
        assert (e.get("tokens"), e.get("samples"), e.get("prompt_tokens")) == (16, 1, 32)
    windows = {e.get("name"): e for e in events if e.kind == "window"}
    assert set(windows) == {"warmup", "measure"}
    measure = windows["measure"]
    assert measure.get("device") == "cpu" and measure.get("t1_ns") > measure.get("t0_ns")
    measure_steps = [e for e in steps if e.get("phase") == "measure"]
    assert all(measure.get("t0_ns") <= e.t_ns <= measure.get("t1_ns") for e in measure_steps)

    result = RunResult.from_dict(events[-1].fields)
    assert result.status == "ok" and result.run_id == f"run-{case}"
    units = {m.name: m.unit for m in result.metrics}
    assert units == METRICS
    v = {m.name: m.value for m in result.metrics}
    assert v["al_s"] > 0 and v["ttft_s"] > 0 and v["tpot_s"] > 0
    assert 0 < v["al_p50_s"] <= v["al_p90_s"] <= v["al_p99_s"]
    assert v["it"] > 0 and v["it"] == v["tokens_per_s"]
    assert v["it"] == pytest.approx(4 * 16 / measure.get("elapsed_s"))
    assert v["total_params"] == 4_003_072
    assert v["eval_ppl"] is not None and v["eval_ppl"] > 1
    for name in ("peak_allocated_gib", "peak_reserved_gib", "mfu"):
        assert v[name] is None  # CPU: unknown, never a fake 0
    if measure.get("energy_j") is None:
        assert v["energy_j"] is None and v["aec_w"] is None and v["j_per_token"] is None
    info = result.info
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "eager": "float32"}[case]
    assert (info["weights"], info["dtype"], info["device"]) == ("random", dtype, "cpu")
    assert (info["batch_size"], info["prompt_tokens"], info["new_tokens"]) == (1, 32, 16)
    assert info["engine"] == ("eager" if case == "eager" else "loop")
    assert info["weight_bytes"] == v["weight_bytes"] and info["threads"] == 1


def test_unknown_technique_is_bad_input(tmp_path: Path) -> None:
    run = launch(tmp_path, "bad", technique="fp7")
    assert run.wait() == 2
    error = run.events()[-1]
    assert error.kind == "error" and error.get("type") == "bad_input"
    assert "fp7" in error.get("message") and "fp32" in error.get("message")
    assert "Traceback" not in run.err


def test_unimplemented_technique_is_unsupported(tmp_path: Path) -> None:
    run = launch(tmp_path, "int4", technique="int4")
    assert run.wait() == 1
    error = run.events()[-1]
    assert (error.kind, error.get("type")) == ("error", "unsupported")
    assert "not implemented yet" in error.get("message")


def test_runner_waits_for_the_device_lock(tmp_path: Path) -> None:
    lock_file = tmp_path / "locks" / "cpu.lock"
    lock_file.parent.mkdir(parents=True)
    with open(lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = launch(tmp_path, "queued", **{**SMALL, "steps": 1}, params={"eval_tokens": 0})
        waiting = run.wait_for(lambda e: e.kind == "phase" and e.get("name") == "waiting_for_lock")
        assert waiting.get("device") == "cpu"
        time.sleep(0.5)
        assert run.proc.poll() is None
        assert not any(e.kind == "phase" and e.get("name") == "load" for e in run.events())
    assert run.wait() == 0, run.err
    result = RunResult.from_dict(run.events()[-1].fields)
    assert result.status == "ok" and result.info["lock_wait_s"] >= 0.4


def test_sigkill_mid_run_leaves_whole_lines(tmp_path: Path) -> None:
    run = launch(tmp_path, "killed", **{**SMALL, "steps": 100_000})
    run.wait_for(lambda e: e.kind == "step" and e.get("phase") == "measure")
    run.proc.send_signal(signal.SIGKILL)
    run.wait()
    raw = (run.run_dir / EVENTS_FILE).read_text()
    assert raw.endswith("\n")
    kinds = [Event.from_json(line).kind for line in raw.splitlines()]  # every line parses
    assert "result" not in kinds and kinds.count("step") >= 3


def test_sigterm_cancels(tmp_path: Path) -> None:
    run = launch(tmp_path, "cancel", **{**SMALL, "steps": 100_000})
    run.wait_for(lambda e: e.kind == "step" and e.get("phase") == "measure")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 1
    last = run.events()[-1]
    assert (last.kind, last.get("type"), last.get("message")) == ("error", "crash", "cancelled")


def test_malformed_spec_is_bad_input(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text('{"run_id": "broken", "family": "inference"')
    out = subprocess.run([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, EFFICIENTLLM_HOME=str(tmp_path)))
    assert out.returncode == 2
    events = [Event.from_json(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    assert [(e.kind, e.get("type")) for e in events] == [("error", "bad_input")]
    assert "not valid JSON" in events[0].get("message")
    assert "Traceback" not in out.stderr


def _cuda_available() -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0


@pytest.mark.gpu
@pytest.mark.parametrize("technique", ["fp32", "bf16", "fp16"])
def test_cuda_run(tmp_path: Path, technique: str) -> None:
    if not _cuda_available():
        pytest.skip("no CUDA device")
    run = launch(tmp_path, f"gpu-{technique}", technique=technique, device="auto", **SMALL,
                 params={"peak_tflops": 989.0})
    assert run.wait(300) == 0, run.err
    events = run.events()
    started = events[0]
    assert started.get("device") == "cuda:0" and started.get("gpu_name")
    assert started.get("versions")["cuda"]
    window = next(e for e in events if e.kind == "window" and e.get("name") == "measure")
    assert window.get("device") == "gpu0"
    result = RunResult.from_dict(events[-1].fields)
    v = {m.name: m.value for m in result.metrics}
    assert 0 < v["peak_allocated_gib"] <= v["peak_reserved_gib"]
    assert v["mfu"] is not None and 0 < v["mfu"] < 1
    assert 0 < v["al_p50_s"] <= v["al_p90_s"] <= v["al_p99_s"]
    assert (tmp_path / "locks" / "cuda0.lock").exists()
