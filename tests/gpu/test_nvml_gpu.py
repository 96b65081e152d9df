"""The NVML backend, GPM and the energy counter on a real GPU, under real load.

`cuda:0` of this process (after CUDA_VISIBLE_DEVICES) is mapped to its NVML index, and
every reading is checked against what torch itself sees of that GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from profiling import metrics
from profiling.backends import nvml
from profiling.backends.base import WatchSet
from profiling.backends.energy import energy_counter, sample_device_for
from profiling.backends.nvml_errors import NvmlNotSupported
from profiling.sample import Sample
from profiling.window import WindowMeter

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]
torch = pytest.importorskip("torch")
GIB = 1024**3


@pytest.fixture(scope="module")
def index() -> int:
    torch.zeros(1, device="cuda:0")  # create the context, so this process is on the GPU
    return nvml.nvml_index_for_cuda(0)


@pytest.fixture(scope="module")
def backend(index: int) -> Iterator[nvml.NvmlBackend]:
    ws = WatchSet()
    ws.add(os.getpid(), "gpu-test")
    b = nvml.NvmlBackend(ws, indices=[index], gpm_interval_s=0.1)
    yield b
    b.close()


def busy_for(seconds: float, b: nvml.NvmlBackend | None = None) -> list[Sample]:
    """Run large bf16 matmuls for `seconds`, sampling `b` every 50 ms meanwhile."""
    x = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    out: list[Sample] = []
    end = time.monotonic() + seconds
    next_sample = time.monotonic()
    while time.monotonic() < end:
        for _ in range(20):
            x @ y
        torch.cuda.synchronize()
        if b is not None and time.monotonic() >= next_sample:
            out.extend(b.sample(time.time_ns()))
            next_sample += 0.05
    return out


def idle_for(seconds: float, b: nvml.NvmlBackend) -> list[Sample]:
    torch.cuda.synchronize()
    out: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.extend(b.sample(time.time_ns()))
        time.sleep(0.05)
    return out


def test_mapping_matches_torch(index: int) -> None:
    props = torch.cuda.get_device_properties(0)
    uuid = str(getattr(props, "uuid", ""))
    st = nvml.NvmlBackend(WatchSet(), indices=[index], gpm=False)
    try:
        nv_uuid = st.status()["devices"][f"gpu{index}"]["uuid"]
    finally:
        st.close()
    if uuid:
        assert nv_uuid.lower().removeprefix("gpu-") == uuid.lower().removeprefix("gpu-")
    assert sample_device_for("cuda:0") == f"gpu{index}"


def test_real_readings(backend: nvml.NvmlBackend, index: int) -> None:
    held = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda:0")
    (s,) = backend.sample(time.time_ns())
    assert s.device == f"gpu{index}" and s.source == "nvml"
    free, total = torch.cuda.mem_get_info(0)
    assert s.mem_total_bytes is not None and abs(s.mem_total_bytes - total) < 0.02 * total
    assert s.mem_used_bytes is not None and s.mem_used_bytes > 2 * GIB
    assert s.power_w is not None and 20 < s.power_w < 1500
    assert s.util_pct is not None and s.temp_c is not None and s.sm_clock_mhz is not None
    st = backend.status()["devices"][f"gpu{index}"]
    assert st["power"] in (nvml.POWER_INSTANT, nvml.POWER_AVERAGE) and not st["lost"]
    del held


def test_foreign_processes_are_the_other_contexts(index: int) -> None:
    """A second process with a context on the GPU is listed; the pids passed as own are
    not. In a pid namespace NVML may list host pids (or none): the count still shows."""
    try:
        everyone = nvml.foreign_processes(index, [])
    except NvmlNotSupported as e:
        pytest.skip(f"the driver does not list GPU processes: {e}")
    if not everyone:
        pytest.skip("NVML lists no process on this GPU, not even this one (pid namespace)")
    assert everyone == sorted(set(everyone)) and all(p > 0 for p in everyone)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; torch.zeros(1, device='cuda:0'); "
         "torch.cuda.synchronize(); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        during = nvml.foreign_processes(index, [])
        assert set(during) - set(everyone)  # the child's context appeared
        if os.getpid() in everyone:  # NVML sees this pid namespace: the child by its pid
            assert child.pid in during
        assert nvml.foreign_processes(index, [os.getpid()]) == [
            p for p in during if p != os.getpid()]
        assert nvml.foreign_processes(index, during) == []
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=60)


def test_gpm_sm_activity_high_under_matmul_low_at_idle(backend: nvml.NvmlBackend,
                                                       index: int) -> None:
    if backend.status()["devices"][f"gpu{index}"]["gpm"] != "supported":
        pytest.skip("GPM is not supported on this GPU")
    busy_for(0.5)
    load = busy_for(3.0, backend)[10:]  # skip the ramp
    rest = idle_for(2.5, backend)[10:]
    t_load = [s.t_ns for s in load]
    sm_load, src = metrics.pcu(load, t_load[0], t_load[-1])
    assert src == "gpm" and sm_load is not None and sm_load > 0.85, sm_load
    tensor = [s.tensor_active_pct for s in load if s.tensor_active_pct is not None]
    assert tensor and sum(tensor) / len(tensor) > 30
    t_rest = [s.t_ns for s in rest]
    sm_rest, _ = metrics.pcu(rest, t_rest[0], t_rest[-1])
    assert sm_rest is not None and sm_rest < 0.05, sm_rest


def test_energy_window_under_load(index: int) -> None:
    counter = energy_counter("cuda:0")
    reader, source = counter.reader, counter.source
    assert source == "nvml" and reader is not None
    meter = WindowMeter(torch.cuda.synchronize, reader, f"gpu{index}", source)
    with meter.measure("matmul") as w:
        busy_for(2.0)
    res = w.result
    assert res is not None and res.energy_j is not None and res.energy_j > 0
    assert res.mean_power_w is not None and 100 < res.mean_power_w < 1500
