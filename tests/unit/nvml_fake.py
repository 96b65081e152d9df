"""A replaced `pynvml` for the NVML backend's tests (tests/unit/test_nvml*.py): the autospec
of the real module, fake GPUs behind it, errors built from the real module, a test clock.

Every NVML function the backend calls is the autospec of the real one, so a call with the
wrong arguments fails here as it would on a GPU. Errors are real `pynvml.NVMLError`s,
built from the module captured before patching.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from profiling.backends import nvml
from profiling.backends.base import WatchSet

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
        self.proc_mem: dict[int, int] = {}
        """pid -> usedGpuMemory in bytes; a pid not here reports None (not available)."""
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
            lambda h: [SimpleNamespace(pid=p, usedGpuMemory=gpu(h, "procs").proc_mem.get(p))
                       for p in gpu(h, "procs").pids]
        m.nvmlDeviceGetMinorNumber.side_effect = lambda h: gpu(h, "minor").index
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
    with mock.patch("profiling.backends.nvml.pynvml", autospec):
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


