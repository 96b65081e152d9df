"""The NVML backend against a replaced `pynvml` (create_autospec of the real module).

Every NVML function the backend calls is the autospec of the real one, so a call with the
wrong arguments fails here as it would on a GPU. Errors are real `pynvml.NVMLError`s,
built from the module captured before patching.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from profiling import metrics, nvml
from profiling.backend import BackendUnavailable, WatchSet, load_backend
from profiling.energy import energy_reader_for, sample_device_for
from profiling.window import WindowMeter

REAL = nvml.pynvml
assert REAL is not None, "nvidia-ml-py must be installed for these tests"
GIB = 1024**3


def err(code: int) -> Exception:
    return REAL.NVMLError(code)


class FakeGpu:
    """What one fake GPU answers; tests edit the fields between ticks."""

    def __init__(self, index: int, uuid: str, name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.index = index
        self.uuid = uuid
        self.name = name
        self.used = (1 + index) * GIB
        self.total = 80 * GIB
        self.reserved = 512 * 1024**2
        self.util = 40 + index
        self.power_mw = 300_000 + index * 1000
        self.avg_power_mw = 250_000
        self.clock = 1980
        self.temp = 50
        self.energy_mj = 1_000_000
        self.gpm = True
        self.gpm_values = {nvml.GPM_SM_UTIL: 97.5, nvml.GPM_ANY_TENSOR_UTIL: 61.0,
                           nvml.GPM_DRAM_BW_UTIL: 33.0}
        self.gpm_codes: dict[int, int] = {}
        self.pids = [100, 200]
        self.fail: dict[str, int] = {}
        """NVML function name -> error code it raises."""
        self.power_field_code = REAL.NVML_SUCCESS


class Fake:
    """Wires an autospecced pynvml to a list of FakeGpus."""

    def __init__(self, m: Any, gpus: list[FakeGpu]) -> None:
        self.m = m
        self.gpus = gpus
        self.init_error: int | None = None
        self.metrics_calls: list[tuple[Any, Any]] = []
        by_handle = {f"h{g.index}": g for g in gpus}

        def gpu(handle: str, fn: str) -> FakeGpu:
            g = by_handle[handle]
            if fn in g.fail:
                raise err(g.fail[fn])
            return g

        def init() -> None:
            if self.init_error is not None:
                raise err(self.init_error)

        def handle_by_index(i: int) -> str:
            if not 0 <= i < len(gpus):
                raise err(REAL.NVML_ERROR_INVALID_ARGUMENT)
            return f"h{i}"

        def mem(h: str, version: int | None = None) -> SimpleNamespace:
            g = gpu(h, "mem_v2" if version else "mem_v1")
            if version:
                return SimpleNamespace(total=g.total, used=g.used, free=g.total - g.used,
                                       reserved=g.reserved, version=version)
            return SimpleNamespace(total=g.total, used=g.used + g.reserved,
                                   free=g.total - g.used - g.reserved)

        def fields(h: str, ids: list[int]) -> list[SimpleNamespace]:
            g = gpu(h, "fields")
            assert ids == [REAL.NVML_FI_DEV_POWER_INSTANT]
            return [SimpleNamespace(fieldId=ids[0], nvmlReturn=g.power_field_code,
                                    valueType=REAL.NVML_VALUE_TYPE_UNSIGNED_INT,
                                    value=SimpleNamespace(uiVal=g.power_mw))]

        def metrics_get(mg: SimpleNamespace) -> SimpleNamespace:
            self.metrics_calls.append((mg.sample1, mg.sample2))
            g = mg.sample2.gpu
            if "gpm_metrics" in g.fail:
                raise err(g.fail["gpm_metrics"])
            assert mg.version == REAL.NVML_GPM_METRICS_GET_VERSION and mg.numMetrics == 3
            for i in range(mg.numMetrics):
                mid = mg.metrics[i].metricId
                mg.metrics[i].nvmlReturn = g.gpm_codes.get(mid, REAL.NVML_SUCCESS)
                mg.metrics[i].value = g.gpm_values[mid]
            return mg

        def sample_get(h: str, buf: SimpleNamespace) -> SimpleNamespace:
            buf.gpu = gpu(h, "gpm_sample")
            return buf

        def energy(h: str) -> int:
            return gpu(h, "energy").energy_mj

        m.nvmlInit.side_effect = init
        m.nvmlSystemGetDriverVersion.return_value = "580.159.04"
        m.nvmlDeviceGetCount.side_effect = lambda: len(gpus)
        m.nvmlDeviceGetHandleByIndex.side_effect = handle_by_index
        m.nvmlDeviceGetName.side_effect = lambda h: gpu(h, "name").name
        m.nvmlDeviceGetUUID.side_effect = lambda h: gpu(h, "uuid").uuid
        m.nvmlDeviceGetMemoryInfo.side_effect = mem
        m.nvmlDeviceGetUtilizationRates.side_effect = \
            lambda h: SimpleNamespace(gpu=gpu(h, "util").util, memory=0)
        m.nvmlDeviceGetFieldValues.side_effect = fields
        m.nvmlDeviceGetPowerUsage.side_effect = lambda h: gpu(h, "power").avg_power_mw
        m.nvmlDeviceGetClockInfo.side_effect = lambda h, t: gpu(h, "clock").clock
        m.nvmlDeviceGetTemperature.side_effect = lambda h, s: gpu(h, "temp").temp
        m.nvmlDeviceGetTotalEnergyConsumption.side_effect = energy
        m.nvmlDeviceGetComputeRunningProcesses.side_effect = \
            lambda h: [SimpleNamespace(pid=p) for p in gpu(h, "procs").pids]
        m.nvmlDeviceGetGraphicsRunningProcesses.side_effect = lambda h: []
        m.nvmlGpmQueryDeviceSupport.side_effect = \
            lambda h: SimpleNamespace(isSupportedDevice=int(gpu(h, "gpm_query").gpm))
        m.nvmlGpmSampleAlloc.side_effect = lambda: SimpleNamespace(gpu=None)
        m.nvmlGpmSampleGet.side_effect = sample_get
        m.c_nvmlGpmMetricsGet_t.side_effect = lambda: SimpleNamespace(
            metrics=[SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)])
        m.nvmlGpmMetricsGet.side_effect = metrics_get


@pytest.fixture(scope="module")
def autospec() -> Any:
    """create_autospec of the whole module takes ~0.4 s: once per file, reset per test."""
    return mock.create_autospec(REAL)


@pytest.fixture
def fake(autospec: Any) -> Iterator[Fake]:
    autospec.reset_mock(return_value=True, side_effect=True)
    gpus = [FakeGpu(0, "GPU-aaaa1111-0000"), FakeGpu(1, "GPU-bbbb2222-0000"),
            FakeGpu(2, "GPU-aabb3333-0000")]
    with mock.patch("profiling.nvml.pynvml", autospec):
        nvml._reset_process_session()
        yield Fake(autospec, gpus)
    nvml._reset_process_session()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def backend(fake: Fake, clock: Clock | None = None, **kw: Any) -> nvml.NvmlBackend:
    return nvml.NvmlBackend(WatchSet(), host="h", gpm_thread=False, mono=clock or Clock(),
                            **kw)


# -- readings ---------------------------------------------------------------------------------

def test_one_sample_per_gpu_with_nvml_readings(fake: Fake) -> None:
    b = backend(fake)
    assert b.devices() == ["gpu0", "gpu1", "gpu2"] and b.gpus == [0, 1, 2]
    s0, s1, _ = b.sample(123)
    assert (s0.t_ns, s0.host, s0.device, s0.source) == (123, "h", "gpu0", "nvml")
    assert s0.mem_used_bytes == GIB and s0.mem_total_bytes == 80 * GIB  # v2: no reserved
    assert s1.util_pct == 41.0 and s1.power_w == pytest.approx(301.0)  # mW -> W
    assert s0.sm_clock_mhz == 1980.0 and s0.temp_c == 50.0
    assert s0.cpu_pct is None and s0.rss_bytes is None
    st = b.status()["devices"]["gpu0"]
    assert st["memory_api"] == "v2" and st["power"] == nvml.POWER_INSTANT
    assert st["gpm"] == "supported" and st["name"] == "NVIDIA H100 80GB HBM3"
    assert b.status()["driver"] == "580.159.04"
    b.close()


def test_indices_choose_gpus(fake: Fake) -> None:
    b = backend(fake, indices=[2])
    assert b.devices() == ["gpu2"] and [s.device for s in b.sample(1)] == ["gpu2"]
    b.close()
    with pytest.raises(nvml.NvmlUnavailable, match="no GPU with NVML index"):
        backend(fake, indices=[7])


def test_power_falls_back_to_the_average_and_says_so(fake: Fake) -> None:
    fake.gpus[0].power_field_code = REAL.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].power_field_code = REAL.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].fail["power"] = REAL.NVML_ERROR_NOT_SUPPORTED
    b = backend(fake)
    s0, s1, s2 = b.sample(1)
    assert s0.power_w == 250.0 and s2.power_w == pytest.approx(302.0)
    assert s1.power_w is None  # neither way: unknown, never 0
    devs = b.status()["devices"]
    assert devs["gpu0"]["power"] == nvml.POWER_AVERAGE and "1 s" in nvml.POWER_AVERAGE
    assert devs["gpu1"]["power"] is None and devs["gpu2"]["power"] == nvml.POWER_INSTANT


def test_not_supported_readings_are_none_never_zero(fake: Fake) -> None:
    g = fake.gpus[0]
    g.fail.update(temp=REAL.NVML_ERROR_NOT_SUPPORTED, clock=REAL.NVML_ERROR_FUNCTION_NOT_FOUND,
                  util=REAL.NVML_ERROR_NOT_SUPPORTED, mem_v2=REAL.NVML_ERROR_FUNCTION_NOT_FOUND)
    b = backend(fake)
    s = b.sample(1)[0]
    assert s.temp_c is None and s.sm_clock_mhz is None and s.util_pct is None
    # v2 missing from this driver: v1, whose `used` includes the reserved memory
    assert b.status()["devices"]["gpu0"]["memory_api"] == "v1"
    assert s.mem_used_bytes == GIB + g.reserved
    assert b.status()["devices"]["gpu0"]["read_errors"] == 0  # unsupported is no error


def test_probe_falls_back_when_v2_or_gpm_are_refused(fake: Fake) -> None:
    g = fake.gpus[0]
    g.fail["mem_v2"] = REAL.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    g.fail["gpm_query"] = REAL.NVML_ERROR_NO_PERMISSION
    b = backend(fake, indices=[0])
    st = b.status()["devices"]["gpu0"]
    assert st["memory_api"] == "v1" and st["gpm"].startswith("unavailable: no permission")
    assert b.sample(1)[0].mem_used_bytes == GIB + g.reserved


def test_a_failed_or_refused_reading_is_none_and_counted(fake: Fake) -> None:
    b = backend(fake)
    fake.gpus[0].fail["util"] = REAL.NVML_ERROR_TIMEOUT
    fake.gpus[0].fail["temp"] = REAL.NVML_ERROR_NO_PERMISSION
    s = b.sample(1)[0]
    assert s.util_pct is None and s.temp_c is None and s.mem_used_bytes == GIB
    st = b.status()["devices"]["gpu0"]
    assert st["read_errors"] == 2 and st["last_error"].startswith("temperature: no permission")
    assert not st["lost"]


def test_power_field_codes(fake: Fake) -> None:
    b = backend(fake)
    fake.gpus[0].power_field_code = REAL.NVML_ERROR_TIMEOUT
    fake.gpus[1].power_field_code = REAL.NVML_ERROR_GPU_IS_LOST
    samples = b.sample(1)
    assert [s.device for s in samples] == ["gpu0", "gpu2"]
    assert samples[0].power_w is None and samples[0].mem_used_bytes == GIB
    assert b.status()["devices"]["gpu0"]["last_error"].startswith("power:")
    assert b.lost_devices() == ["gpu1"]


def test_gpu_lost_mid_run_stops_its_samples_only(fake: Fake) -> None:
    b = backend(fake)
    assert len(b.sample(1)) == 3
    fake.gpus[1].fail["util"] = REAL.NVML_ERROR_GPU_IS_LOST
    fake.gpus[2].fail["mem_v2"] = REAL.NVML_ERROR_NOT_FOUND  # gone from the bus
    samples = b.sample(2)
    assert [s.device for s in samples] == ["gpu0"]
    st = b.status()
    assert st["lost"] == ["gpu1", "gpu2"] and b.lost_devices() == ["gpu1", "gpu2"]
    assert st["devices"]["gpu1"]["lost"] and "lost" in st["devices"]["gpu1"]["lost_reason"]
    calls = fake.m.nvmlDeviceGetUtilizationRates.call_count
    assert [s.device for s in b.sample(3)] == ["gpu0"]
    assert fake.m.nvmlDeviceGetUtilizationRates.call_count == calls + 1  # lost ones: no calls
    fake.gpus[0].fail["mem_v2"] = REAL.NVML_ERROR_GPU_IS_LOST
    assert b.sample(4) == []  # every GPU gone: no samples, no crash
    b.close()


def test_driver_gone_mid_run_raises_unavailable(fake: Fake) -> None:
    b = backend(fake)
    fake.gpus[0].fail["mem_v2"] = REAL.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(nvml.NvmlUnavailable, match="driver is not loaded"):
        b.sample(1)  # the daemon logs a failing backend and retries next tick


@pytest.mark.parametrize(("code", "text"), [
    ("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML shared library not found"),
    ("NVML_ERROR_DRIVER_NOT_LOADED", "driver is not loaded"),
    ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "driver/library version mismatch"),
    ("NVML_ERROR_NO_PERMISSION", "no permission"),
])
def test_init_failures_are_backend_unavailable(fake: Fake, code: str, text: str) -> None:
    fake.init_error = getattr(REAL, code)
    with pytest.raises(BackendUnavailable, match=text):
        backend(fake)
    with pytest.raises(BackendUnavailable, match=text):
        load_backend("nvml", WatchSet())
    reader, source = energy_reader_for("cuda:0", env={})
    assert (reader, source) == (None, None)


def test_no_gpu_and_no_package(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.gpus.clear()
    with pytest.raises(nvml.NvmlUnavailable, match="found no GPU"):
        backend(fake)
    fake.m.nvmlShutdown.assert_called()  # init was balanced
    monkeypatch.setattr(nvml, "pynvml", None)
    with pytest.raises(BackendUnavailable, match="nvidia-ml-py"):
        nvml.NvmlBackend(WatchSet())


def test_translate_maps_each_code_once() -> None:
    assert nvml.translate(err(REAL.NVML_ERROR_NOT_SUPPORTED)) is None
    assert nvml.translate(err(REAL.NVML_ERROR_FUNCTION_NOT_FOUND)) is None
    assert nvml.translate(REAL.NVMLLibraryMismatchError("old driver")) is None
    for code in ("GPU_IS_LOST", "NOT_FOUND", "GPU_NOT_FOUND", "RESET_REQUIRED"):
        assert isinstance(nvml.translate(err(getattr(REAL, f"NVML_ERROR_{code}"))),
                          nvml.NvmlDeviceLost)
    perm = nvml.translate(err(REAL.NVML_ERROR_NO_PERMISSION))
    assert isinstance(perm, nvml.NvmlNoPermission) and isinstance(perm, BackendUnavailable)
    other = nvml.translate(err(REAL.NVML_ERROR_TIMEOUT))
    assert type(other) is nvml.NvmlError and other.code == REAL.NVML_ERROR_TIMEOUT


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
    assert energy_reader_for("cuda:0", env={}) == (None, None)


def test_energy_reader_for_maps_cuda_through_visible_devices(fake: Fake) -> None:
    reader, source = energy_reader_for("cuda:0", env={"CUDA_VISIBLE_DEVICES": "2"})
    assert source == "nvml" and reader is not None
    fake.gpus[2].energy_mj = 7000
    assert reader() == 7.0
    assert energy_reader_for("gpu1", env={})[1] == "nvml"
    assert energy_reader_for("mps", env={}) == (None, None)
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
