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

import psutil
import pytest
import torch

from runners.protocol import (
    EVENTS_FILE,
    NO_PEAK_NOTE,
    PID_FILE,
    RANDOM_WEIGHTS_NOTE,
    Event,
    RunResult,
    RunSpec,
)
from tests.model_cache import MODEL, smollm2_cache  # noqa: F401

from . import checks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(seq_len=32, new_tokens=16, steps=4, warmup=2)
"""A run small enough for seconds on two cores, big enough to have every event."""
METRICS = {
    "al_s": "s", "al_p50_s": "s", "al_p90_s": "s", "al_p99_s": "s", "ttft_s": "s",
    "ttft_p50_s": "s", "ttft_p90_s": "s", "ttft_p99_s": "s", "tpot_s": "s", "tpot_p50_s": "s",
    "tpot_p90_s": "s", "tpot_p99_s": "s", "it": "tokens/s", "tokens_per_s": "tokens/s",
    "prefill_tokens_per_s": "tokens/s", "decode_tokens_per_s": "tokens/s",
    "roofline_fraction": "fraction", "energy_j": "J", "aec_w": "W", "j_per_token": "J/token",
    "prefill_energy_j": "J", "prefill_j_per_token": "J/token", "decode_energy_j": "J",
    "decode_j_per_token": "J/token", "peak_allocated_gib": "GiB", "peak_reserved_gib": "GiB",
    "peak_rss_gib": "GiB", "total_params": "params", "weight_bytes": "bytes",
    "mfu": "fraction", "eval_ppl": "ppl", "reference_ppl": "ppl",
    "reference_weight_bytes": "bytes", "compression_ratio": "ratio", "mcr": "ratio",
}
QUANTIZED = ("int8", "int4", "fp8", "w8a8")
TORCHAO = ("int8-ao",)
"""torchao techniques that run on the CPU (int4-ao's layout needs CUDA)."""
TINY_FP32_BYTES = 4 * 4_003_072 + 2 * 32 * 4  # fp32 weights + the rotary buffers


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


def _write_spec(home: Path, run_id: str, **spec: object) -> Path:
    fields: dict[str, object] = dict(run_id=run_id, family="inference", technique="fp32",
                                     model="tiny", device="cpu")
    fields.update(spec)
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(RunSpec(**fields).to_json())  # type: ignore[arg-type]
    return run_dir


def launch(home: Path, run_id: str, **spec: object) -> Run:
    """Write runs/<run_id>/spec.json under `home` and start the runner on it, detached."""
    run_dir = _write_spec(home, run_id, **spec)
    env = dict(os.environ, EFFICIENTLLM_HOME=str(home))
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runners", str(run_dir)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return Run(run_dir, proc)


TINY_CASES: dict[str, dict[str, object]] = {
    "fp32": {}, "bf16": {"technique": "bf16"}, "fp16": {"technique": "fp16"},
    "eager": {"params": {"engine": "eager"}},
    "static": {"params": {"engine": "static", "peak_tflops": 0.5, "mem_bw_gbps": 20.0}},
    "fused": {"params": {"engine": "fused"}},
    **{t: {"technique": t} for t in QUANTIZED + TORCHAO},
}
SUBPROCESS_CASES = ("fp32", "eager", "int4")
"""Run as real detached runner processes; the rest go through the runner's entry point
(`runners.__main__.execute`) in this process, one torch import for all of them."""


@dataclass
class InProcess:
    """What `finished` keeps of a run executed in this process."""

    run_dir: Path
    pid: int

    def events(self) -> list[Event]:
        return [Event.from_json(x) for x in (self.run_dir / EVENTS_FILE).read_text().splitlines()]

    @property
    def err(self) -> str:
        return self.events()[-1].to_json()


def execute_here(home: Path, run_id: str, **spec: object) -> tuple[InProcess, int]:
    """Run a spec through the runner's own entry point in this process."""
    from runners.__main__ import execute
    from runners.system.eventlog import EventLog

    run_dir = _write_spec(home, run_id, **spec)
    threads = torch.get_num_threads()
    log = EventLog(run_dir / EVENTS_FILE)
    try:
        code = execute(run_dir, log)
    finally:
        log.close()
        torch.set_num_threads(threads)
    return InProcess(run_dir, os.getpid()), code


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Run | InProcess, int]]:
    """Every technique (and the generate() and static-cache engines) on tiny: a few as
    detached subprocesses, started first, the rest in this process meanwhile."""
    def spec(name: str) -> dict[str, object]:
        extra = dict(TINY_CASES[name])
        params = {"threads": 1, **extra.pop("params", {})}  # type: ignore[dict-item]
        return {**SMALL, "params": params, **extra}

    started = {name: launch(tmp_path_factory.mktemp(name), f"run-{name}", **spec(name))
               for name in SUBPROCESS_CASES}
    out: dict[str, tuple[Run | InProcess, int]] = {}
    for name in TINY_CASES:
        if name not in started:
            out[name] = execute_here(tmp_path_factory.mktemp(name), f"run-{name}", **spec(name))
    for name, run in started.items():
        out[name] = (run, run.wait(180))
    return out


@pytest.mark.parametrize("case", list(TINY_CASES))
def test_run_emits_every_event_and_metric(finished: dict[str, tuple[Run | InProcess, int]],
                                          case: str) -> None:
    run, code = finished[case]
    events = run.events()
    if case == "fp16" and code == 1 and events[-1].get("type") == "unsupported":
        pytest.skip(f"fp16 unsupported here: {events[-1].get('message')}")
    assert code == 0, run.err
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "error" not in kinds
    technique = TINY_CASES[case].get("technique", "fp32")

    started = events[0]
    pid = run.proc.pid if isinstance(run, Run) else run.pid
    assert started.get("pid") == pid and started.get("device") == "cpu"
    assert set(started.get("versions")) >= {"torch", "transformers", "peft", "optimum-quanto",
                                            "cuda", "driver"}
    assert started.get("versions")["torch"]
    if isinstance(run, Run):
        pid_file = (run.run_dir / PID_FILE).read_text()
        assert f'"pid": {pid}' in pid_file and "create_time" in pid_file

    phases = [e.get("name") for e in events if e.kind == "phase"]
    expected = ["load"]
    if technique != "fp32":
        expected.append("reference")  # the fp32 reference's size, measured before the cast
    if technique in QUANTIZED + TORCHAO:
        expected.append("quantize")
    if technique == "w8a8":
        expected.append("calibrate")
    if technique == "int4":  # fp32 int4 on CPU unpacks with quanto's C++ extension
        expected.append("build_kernels")
    # no "eval": random weights are not scored
    assert phases == [*expected, "prepare", "warmup", "measure", "prefill", "done"]
    reference = [e for e in events if e.kind == "phase" and e.get("name") == "reference"]
    assert [(e.get("dtype"), e.get("tokens")) for e in reference] == (
        [("float32", 0)] if technique != "fp32" else [])
    steps = [e for e in events if e.kind == "step"]
    assert [(e.get("phase"), e.get("step")) for e in steps] == [
        ("warmup", 0), ("warmup", 1), ("measure", 0), ("measure", 1), ("measure", 2),
        ("measure", 3), ("prefill", 0), ("prefill", 1), ("prefill", 2), ("prefill", 3)]
    for e in steps:
        assert e.get("latency_s") > 0
        assert (e.get("samples"), e.get("prompt_tokens")) == (1, 32)
        if e.get("phase") != "prefill":
            assert 0 < e.get("ttft_s") <= e.get("latency_s") and e.get("tokens") == 16
    windows = {e.get("name"): e for e in events if e.kind == "window"}
    assert set(windows) == {"warmup", "measure", "prefill"}
    measure = windows["measure"]
    assert measure.get("device") == "cpu" and measure.get("t1_ns") > measure.get("t0_ns")
    measure_steps = [e for e in steps if e.get("phase") == "measure"]
    # the requests run one after another inside the measured window
    assert sum(e.get("latency_s") for e in measure_steps) <= measure.get("elapsed_s")
    assert all(measure.get("t0_ns") <= e.t_ns <= measure.get("t1_ns") for e in measure_steps)

    result = RunResult.from_dict(events[-1].fields)
    assert result.status == "ok" and result.run_id == f"run-{case}"
    got = checks.by_name(result.metrics)
    assert {n: m.unit for n, m in got.items()} == METRICS
    checks.nulls_explained(result.metrics)
    v = {n: m.value for n, m in got.items()}
    info = result.info
    # Latency, TTFT and TPOT: the measured requests' own step events, nothing else.
    checks.latency_matches(got, [e.get("latency_s") for e in measure_steps])
    checks.latency_matches(got, [e.get("ttft_s") for e in measure_steps],
                           ("ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s"))
    checks.latency_matches(got, [e.get("tpot_s") for e in measure_steps],
                           ("tpot_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s"))
    for e in measure_steps:
        assert e.get("tpot_s") == pytest.approx((e.get("latency_s") - e.get("ttft_s")) / 15)
    # 4 requests x 16 generated tokens over the measured window
    assert v["it"] == v["tokens_per_s"] == pytest.approx(4 * 16 / measure.get("elapsed_s"))
    assert info["measure_s"] == measure.get("elapsed_s")
    assert v["decode_tokens_per_s"] == pytest.approx(1 / v["tpot_s"])
    assert v["prefill_tokens_per_s"] == pytest.approx(32 / v["ttft_s"])
    assert v["total_params"] == info["total_params"] == 4_003_072
    assert v["weight_bytes"] == info["weight_bytes"]
    assert v["weight_bytes"] < v["peak_rss_gib"] * 2**30 < psutil.virtual_memory().total
    for name in ("peak_allocated_gib", "peak_reserved_gib"):
        assert v[name] is None  # CPU: no torch allocator peak, never a fake 0
    # MFU's FLOPs: 2N for each of the P + G - 1 = 47 tokens through the model, plus the
    # causal attention term 4 L d_attn t for t = 1..47 (L = 4, d_attn = 4 heads x 64).
    flops = 2 * 4_003_072 * 47 + 4 * 4 * 256 * (47 * 48 // 2)
    assert info["mfu_flops_per_sequence"] == flops
    if info["peak_tflops"] is None:
        assert got["mfu"].note == NO_PEAK_NOTE
    else:
        assert v["mfu"] == pytest.approx(4 * flops / measure.get("elapsed_s")
                                         / (info["peak_tflops"] * 1e12))
    if info["mem_bw_gbps"] is None:
        assert v["roofline_fraction"] is None and "mem_bw_gbps" in got["roofline_fraction"].note
    else:  # every decode step reads every weight byte once
        roof = info["mem_bw_gbps"] * 1e9 / v["weight_bytes"]
        assert v["roofline_fraction"] == pytest.approx(v["decode_tokens_per_s"] / roof)
    checks.energy_matches(got, measure.fields, 4 * 16)
    prefill = windows["prefill"].fields
    checks.energy_matches(got, prefill, 4 * 32, "prefill_energy_j", None, "prefill_j_per_token")
    if measure.get("energy_j") is None:
        checks.energy_matches(got, measure.fields, 4 * 15, "decode_energy_j", None,
                              "decode_j_per_token")
    elif prefill.get("energy_j") is not None and measure.get("energy_j") >= prefill["energy_j"]:
        assert v["decode_energy_j"] == pytest.approx(measure.get("energy_j") - prefill["energy_j"])
        assert v["decode_j_per_token"] == pytest.approx(v["decode_energy_j"] / (4 * 15))
    # Random weights: perplexity is never computed (no eval phase), MCR never stored ...
    assert info["weights"] == "random" and info["quality_scored"] is False
    for name in ("eval_ppl", "reference_ppl", "mcr"):
        assert (v[name], got[name].source, got[name].note) == (None, "none", RANDOM_WEIGHTS_NOTE)
    # ... while the size side of the comparison, against the fp32 original, still is.
    assert v["reference_weight_bytes"] == info["reference_weight_bytes"] == TINY_FP32_BYTES
    assert v["compression_ratio"] == TINY_FP32_BYTES / v["weight_bytes"]
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(technique, "float32")
    assert (info["weights"], info["dtype"], info["device"]) == ("random", dtype, "cpu")
    assert (info["batch_size"], info["prompt_tokens"], info["new_tokens"]) == (1, 32, 16)
    assert (info["measured_requests"], info["warmup_requests"]) == (4, 2)
    assert info["engine"] == {"eager": "eager", "static": "static",
                              "fused": "fused"}.get(case, "loop")
    assert info["engine_detail"]["engine"] == info["engine"]
    assert info["threads"] == 1
    assert info["mcr_reference"] == "float32" and info["mcr_reference_note"] is None
    if technique in QUANTIZED + TORCHAO:
        assert v["weight_bytes"] < TINY_FP32_BYTES / 2  # int8/fp8 < 2 bytes, int4 < 1
        assert v["compression_ratio"] > 2
        q = info["quantization"]
        backend = "torchao" if technique in TORCHAO else "quanto"
        assert q["backend"] == backend and q["exclude"] == ["lm_head"]
        assert q["weight_classes"]["Tensor"] == 1 and q["kernels"]
    elif technique == "fp32":
        assert v["weight_bytes"] == TINY_FP32_BYTES and v["compression_ratio"] == 1.0
    else:  # 16-bit weights; the rotary buffers stay fp32
        assert v["weight_bytes"] == 2 * 4_003_072 + 256
        assert v["compression_ratio"] == pytest.approx(2.0, rel=1e-3)


# -- real weights -------------------------------------------------------------------------------

SMOLLM2_TECHNIQUES = ("fp32", "bf16", "fp16", *QUANTIZED)
SMOLLM2_SMALL = dict(seq_len=16, new_tokens=4, steps=1, warmup=1)


@pytest.fixture(scope="module")
def smollm2_runs(smollm2_cache: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
                 ) -> dict[str, tuple[int, list[Event]]]:
    """Every technique on SmolLM2-135M: one real runner subprocess (fp32), the others
    through the runner's own entry point in this process (one torch import, not six)."""
    params = {"threads": 1, "eval_tokens": 64, "calibration_tokens": 64}
    sub = launch(tmp_path_factory.mktemp("smol-fp32"), "smol-fp32", model=MODEL,
                 params=params, **SMOLLM2_SMALL)
    out: dict[str, tuple[int, list[Event]]] = {}
    for technique in SMOLLM2_TECHNIQUES[1:]:
        run, code = execute_here(tmp_path_factory.mktemp(f"smol-{technique}"),
                                 f"smol-{technique}", model=MODEL, technique=technique,
                                 params=params, **SMOLLM2_SMALL)
        out[technique] = (code, run.events())
    code = sub.wait(180)
    assert code == 0, sub.err
    out["fp32"] = (code, sub.events())
    return out


@pytest.mark.parametrize("technique", SMOLLM2_TECHNIQUES)
def test_every_technique_on_real_weights(smollm2_runs: dict[str, tuple[int, list[Event]]],
                                         technique: str) -> None:
    code, events = smollm2_runs[technique]
    assert code == 0, events[-1].fields
    result = RunResult.from_dict(events[-1].fields)
    got = checks.by_name(result.metrics)
    checks.nulls_explained(result.metrics)
    v = {m.name: m.value for m in result.metrics}
    info = result.info
    assert info["weights"] == "real" and "Q4_1" in info["weights_source"]
    assert info["tokenizer"] != "byte" and info["total_params"] == 134_515_008
    # real weights are scored: perplexity on the held-out text, at both precisions
    assert info["quality_scored"] is True and info["mcr_reference"] == "float32"
    evals = [e for e in events if e.kind == "phase" and e.get("name") == "eval"]
    assert [e.get("tokens") for e in evals] == [info["eval_tokens"]] and info["eval_tokens"] > 1
    for name in ("eval_ppl", "reference_ppl", "mcr", "compression_ratio"):
        assert (got[name].source, got[name].note) == ("runner", None), name
    fp32_bytes = 4 * 134_515_008
    assert fp32_bytes <= v["reference_weight_bytes"] < fp32_bytes + 100_000
    assert v["reference_weight_bytes"] == info["reference_weight_bytes"]
    assert v["compression_ratio"] == v["reference_weight_bytes"] / v["weight_bytes"]
    # real weights: perplexity far below the 49152-token vocabulary, close to the reference
    assert 5 < v["reference_ppl"] < 200 and 5 < v["eval_ppl"] < 3 * v["reference_ppl"]
    assert v["mcr"] == pytest.approx(v["compression_ratio"] * v["reference_ppl"] / v["eval_ppl"])
    if technique == "fp32":  # its own reference: the same weights, the same perplexity
        assert v["eval_ppl"] == v["reference_ppl"] and v["mcr"] == v["compression_ratio"] == 1.0
    elif technique in ("bf16", "fp16"):  # the reference is the fp32 copy, cast before the run
        assert v["compression_ratio"] == pytest.approx(2.0, rel=1e-3)
    if technique in QUANTIZED:
        assert v["weight_bytes"] < fp32_bytes / 2
        assert info["quantization"]["weight_classes"]["Tensor"] == 1  # lm_head, tied
    if technique in ("int8", "fp8"):
        assert v["eval_ppl"] < 1.1 * v["reference_ppl"]  # 8-bit weights barely move it


def test_oom_before_allocating_is_a_result_for_quantized_runs(tmp_path: Path) -> None:
    import psutil

    if psutil.virtual_memory().available > 50 * 2**30:
        pytest.skip("this machine could hold the 59 GB of fp32 weights the test relies on")
    run = launch(tmp_path, "too-big", technique="int4", model="qwen2.5-14b", **SMALL)
    assert run.wait(120) == 1
    events = run.events()
    error, result = events[-2], RunResult.from_dict(events[-1].fields)
    assert (error.kind, error.get("type")) == ("error", "oom")
    assert result.status == "oom" and result.error_type == "oom"
    assert "needs" in (result.error_message or "") and "GiB" in (result.error_message or "")
    assert result.info["batch_size"] == 1 and result.info["technique"] == "int4"
    assert "peak_rss_gib" in result.info


def test_torchao_int4_on_the_cpu_is_unsupported(tmp_path: Path) -> None:
    run = launch(tmp_path, "int4-ao", technique="int4-ao")
    assert run.wait() == 1
    error = run.events()[-1]
    assert (error.kind, error.get("type")) == ("error", "unsupported")
    assert "needs a CUDA device" in error.get("message")
    assert "Traceback" not in run.err


def test_unknown_technique_is_bad_input(tmp_path: Path) -> None:
    run = launch(tmp_path, "bad", technique="fp7")
    assert run.wait() == 2
    error = run.events()[-1]
    assert error.kind == "error" and error.get("type") == "bad_input"
    assert "fp7" in error.get("message") and "fp32" in error.get("message")
    assert "Traceback" not in run.err


def test_graph_engine_on_cpu_is_unsupported(tmp_path: Path) -> None:
    run = launch(tmp_path, "graph-cpu", params={"engine": "graph"})
    assert run.wait() == 1
    error = run.events()[-1]
    assert (error.kind, error.get("type")) == ("error", "unsupported")
    assert "needs a CUDA device" in error.get("message")


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
    seconds = window.get("elapsed_s")
    assert v["mfu"] == pytest.approx(4 * result.info["mfu_flops_per_sequence"] / seconds / 989e12)
    assert 0 < v["mfu"] < 1
    assert 0 < v["al_p50_s"] <= v["al_p90_s"] <= v["al_p99_s"]
    assert (tmp_path / "locks" / "cuda0.lock").exists()
