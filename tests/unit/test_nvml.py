"""The NVML backend against a replaced `pynvml` (tests/unit/nvml_fake.py): readings, power
fields, refused and failed readings, lost GPUs and drivers, error codes (GPM, foreign
processes, energy and device mapping: test_nvml_gpm.py).
"""

from __future__ import annotations

import pytest

from profiling.backends import nvml
from profiling.backends.base import BackendUnavailable, WatchSet, load_backend
from profiling.backends.energy import energy_counter
from tests.unit import nvml_fake
from tests.unit.nvml_fake import GIB, REAL, Fake, backend, err

autospec = nvml_fake.autospec  # fixtures, used by name
fake = nvml_fake.fake


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
    counter = energy_counter("cuda:0", env={})
    assert (counter.reader, counter.source) == (None, None)
    assert counter.note is not None and counter.note.startswith("no energy counter for cuda:0")


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
