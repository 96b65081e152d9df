"""The NVML backend against a replaced `pynvml` (tests/unit/nvml_fake.py): GPM on its own
cadence and PCU, foreign processes, the energy counter, CUDA_VISIBLE_DEVICES mapping.
"""

from __future__ import annotations

import time

import pytest

from profiling import metrics
from profiling.backends import nvml
from profiling.backends.base import WatchSet
from profiling.backends.energy import energy_counter, sample_device_for
from profiling.window import WindowMeter
from tests.unit import nvml_fake
from tests.unit.nvml_fake import REAL, Clock, Fake, backend, err

autospec = nvml_fake.autospec  # fixtures, used by name
fake = nvml_fake.fake


# -- GPM ----------------------------------------------------------------------------------------

def test_gpm_needs_two_samples_100ms_apart_and_is_attached_until_stale(fake: Fake) -> None:
    clock = Clock()
    b = backend(fake, clock, indices=[0])
    assert b.sample(1)[0].sm_active_pct is None  # one GPM sample: nothing to compare yet
    clock.t += 0.05
    assert b.sample(2)[0].sm_active_pct is None  # 50 ms: too early for a second sample
    assert fake.m.nvmlGpmSampleGet.call_count == 1
    clock.t += 0.05
    s = b.sample(3)[0]
    assert (s.sm_active_pct, s.tensor_active_pct, s.dram_active_pct) == (97.5, 61.0, 33.0)
    assert s.source == "nvml"  # the row is an NVML reading; GPM fields say GPM
    older, newer = fake.metrics_calls[-1]
    assert older is not newer
    fake.gpus[0].gpm_values[nvml.GPM_SM_UTIL] = 10.0
    clock.t += 0.03
    assert b.sample(4)[0].sm_active_pct == 97.5  # the last result holds until the next one
    clock.t += 0.08
    assert b.sample(5)[0].sm_active_pct == 10.0
    fake.gpus[0].fail["gpm_sample"] = REAL.NVML_ERROR_TIMEOUT
    clock.t += 0.5
    assert b.sample(6)[0].sm_active_pct == 10.0  # still fresh
    clock.t += 1.0
    assert b.sample(7)[0].sm_active_pct is None  # stale: unknown, never the old value
    assert "GPM" in b.status()["devices"]["gpu0"]["last_error"]
    b.close()
    assert fake.m.nvmlGpmSampleFree.call_count == 2 and fake.m.nvmlShutdown.called


def test_one_gpm_metric_unsupported_leaves_the_others(fake: Fake) -> None:
    clock = Clock()
    fake.gpus[0].gpm_codes[nvml.GPM_DRAM_BW_UTIL] = REAL.NVML_ERROR_NOT_SUPPORTED
    b = backend(fake, clock, indices=[0])
    b.sample(1)
    clock.t += 0.1
    s = b.sample(2)[0]
    assert s.sm_active_pct == 97.5 and s.dram_active_pct is None


def test_gpm_unsupported_gives_none_and_pcu_falls_back_to_utilization(fake: Fake) -> None:
    clock = Clock()
    for g in fake.gpus:
        g.gpm = False
    b = backend(fake, clock, indices=[0])
    assert "unsupported" in b.status()["devices"]["gpu0"]["gpm"]
    samples = []
    for i in range(5):
        samples.extend(b.sample(i * 100_000_000))
        clock.t += 0.1
    assert all(s.sm_active_pct is None and s.tensor_active_pct is None for s in samples)
    value, source = metrics.pcu(samples, 0, 400_000_000)
    assert source == "nvml" and value == pytest.approx(0.40)
    fake.m.nvmlGpmSampleGet.assert_not_called()


def test_gpm_off_and_pcu_prefers_gpm(fake: Fake) -> None:
    clock = Clock()
    b = backend(fake, clock, indices=[0], gpm=False)
    assert b.status()["devices"]["gpu0"]["gpm"] == "off (disabled)"
    b.close()
    b = backend(fake, clock, indices=[0])
    samples = []
    for i in range(4):
        samples.extend(b.sample(i * 100_000_000))
        clock.t += 0.1
    value, source = metrics.pcu(samples, 100_000_000, 300_000_000)
    assert source == "gpm" and value == pytest.approx(0.975)


def test_gpm_interval_floor(fake: Fake) -> None:
    with pytest.raises(ValueError, match="100 ms"):
        backend(fake, gpm_interval_s=0.05)


def test_gpm_thread_runs_on_its_own_cadence(fake: Fake) -> None:
    b = nvml.NvmlBackend(WatchSet(), indices=[0], gpm_interval_s=0.1)
    try:
        deadline = time.monotonic() + 3
        while not fake.metrics_calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.sample(1)[0].sm_active_pct == 97.5
        assert b.status()["gpm_thread"] is True
    finally:
        b.close()
    n = fake.m.nvmlGpmSampleGet.call_count
    time.sleep(0.25)
    assert fake.m.nvmlGpmSampleGet.call_count == n  # stopped with the backend


# -- processes, energy, device mapping ----------------------------------------------------------

def test_foreign_processes(fake: Fake) -> None:
    assert nvml.foreign_processes(0, own_pids=[100]) == [200]
    assert nvml.foreign_processes(1, own_pids={100, 200}) == []
    fake.m.nvmlDeviceGetComputeRunningProcesses.side_effect = err(REAL.NVML_ERROR_NOT_SUPPORTED)
    fake.m.nvmlDeviceGetGraphicsRunningProcesses.side_effect = err(REAL.NVML_ERROR_NOT_SUPPORTED)
    with pytest.raises(nvml.NvmlNotSupported):
        nvml.foreign_processes(0, [])
    fake.m.nvmlInit.assert_called_once()  # one process-wide session


def test_status_lists_foreign_pids_of_watched_runs(fake: Fake) -> None:
    ws = WatchSet()
    b = nvml.NvmlBackend(ws, indices=[0], gpm_thread=False)
    assert "foreign_pids" not in b.status()["devices"]["gpu0"]  # nothing watched
    ws.add(100, "run-1")
    assert b.status()["devices"]["gpu0"]["foreign_pids"] == [200]


def test_energy_reader_in_joules_and_window_counter_reset(fake: Fake) -> None:
    read = nvml.nvml_energy_reader(1)
    assert read() == 1000.0
    fake.gpus[1].energy_mj += 2500
    assert read() == 1002.5
    meter = WindowMeter(None, read, "gpu1", "nvml")
    meter.begin("w")
    fake.gpus[1].energy_mj += 12_345
    res = meter.end("w")
    assert res.energy_j == pytest.approx(12.345) and res.energy_source == "nvml"
    meter.begin("w2")
    fake.gpus[1].energy_mj = 10  # driver reloaded: the counter starts again
    res = meter.end("w2")
    assert res.energy_j is None and "reset" in (res.energy_note or "")
    fake.gpus[1].fail["energy"] = REAL.NVML_ERROR_GPU_IS_LOST
    assert read() is None


def test_energy_reader_unsupported(fake: Fake) -> None:
    fake.gpus[0].fail["energy"] = REAL.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(nvml.NvmlNotSupported):
        nvml.nvml_energy_reader(0)
    counter = energy_counter("cuda:0", env={})
    assert (counter.reader, counter.source) == (None, None)
    assert counter.note is not None and "cuda:0" in counter.note


def test_energy_reader_for_maps_cuda_through_visible_devices(fake: Fake) -> None:
    counter = energy_counter("cuda:0", env={"CUDA_VISIBLE_DEVICES": "2"})
    reader = counter.reader
    assert counter.source == "nvml" and reader is not None and counter.note is None
    fake.gpus[2].energy_mj = 7000
    assert reader() == 7.0
    assert energy_counter("gpu1", env={}).source == "nvml"
    mps = energy_counter("mps", env={})
    assert (mps.reader, mps.source, mps.note) == (None, None, "no energy counter for device 'mps'")
    assert sample_device_for("cuda:1", env={"CUDA_VISIBLE_DEVICES": "2,0"}) == "gpu0"
    assert sample_device_for("cuda", env={}) == "gpu0"
    assert sample_device_for("cpu") == "cpu"
    # not mappable: the CUDA index, so the run still names a device
    assert sample_device_for("cuda:3", env={"CUDA_VISIBLE_DEVICES": "1"}) == "gpu3"


def test_nvml_index_for_cuda(fake: Fake) -> None:
    f = nvml.nvml_index_for_cuda
    assert [f(i, {}) for i in range(3)] == [0, 1, 2]
    env = {"CUDA_VISIBLE_DEVICES": "2,0"}
    assert (f(0, env), f(1, env)) == (2, 0)
    with pytest.raises(nvml.VisibleDevicesError, match="cuda:2 is not visible"):
        f(2, env)
    assert f(0, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}) == 1  # UUID prefix
    assert f(1, {"CUDA_VISIBLE_DEVICES": "1, GPU-aabb3333-0000"}) == 2
    with pytest.raises(nvml.VisibleDevicesError, match="leaves 0 of 3"):
        f(0, {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(nvml.VisibleDevicesError, match="MIG"):
        f(0, {"CUDA_VISIBLE_DEVICES": "MIG-4f2a0c1e-1111-2222-3333-444455556666"})
    with pytest.raises(nvml.VisibleDevicesError):
        f(-1, {})


def test_parse_visible_devices_follows_cuda_rules() -> None:
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-aabb3333"]
    calls = []

    def listing() -> list[str]:
        calls.append(1)
        return uuids

    p = nvml.parse_visible_devices
    assert p("1,0", 3, listing) == [1, 0] and not calls  # indices need no UUIDs
    assert p("0,x,2", 3, listing) == [0]  # an invalid entry ends the list
    assert p("2,7,0", 3, listing) == [2]  # so does one out of range
    assert p("1,1,0", 3, listing) == [1]  # and a repeat
    assert p("GPU-aa", 3, listing) == []  # ambiguous prefix
    assert p("gpu-bbbb2222,0", 3, listing) == [1, 0]
    assert p("-1", 3, listing) == []
    with pytest.raises(nvml.VisibleDevicesError, match="MIG"):
        p("0,MIG-GPU-aaaa1111/1/0", 3, listing)
