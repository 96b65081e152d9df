"""The NVML + GPM backend: the one module that imports `pynvml`.

Everything NVML-shaped stays here: error codes, handles, ctypes structs, GPM sample buffers.
The rest of the package sees typed readings (`GpuReading`), typed errors and Samples.

Why it is built this way:
- One mapping from NVML error codes to outcomes (`_call`): NOT_SUPPORTED (and a function
  the installed driver lacks) is `None`, never 0; a lost GPU raises `NvmlDeviceLost`; a
  missing library, an unloaded driver, a driver/library mismatch or no permission raise
  `NvmlUnavailable`, a `BackendUnavailable` with a message that names the fix.
- Constants, error classes and struct versions are read from `pynvml` once, at import, so
  tests can replace the module with `create_autospec` and still raise real NVML errors.
- One sweep a device a tick: memory, utilization.gpu, power, SM clock, temperature (22-29
  us together on an H100, docs/benchmarks.md). Power is the instant field
  (`NVML_FI_DEV_POWER_INSTANT`) where the driver has it, else `nvmlDeviceGetPowerUsage`, a
  ~1 s moving average on Ampere and newer; which one a device uses is in `status()`. Both
  refresh about every 100 ms, so sampling power faster than 10 Hz adds nothing.
- GPM (Hopper and newer) needs two counter samples at least 100 ms apart, so it runs on
  its own cadence (a thread, `gpm_interval_s`), independent of the tick rate (a GPM poll
  costs ~0.4 ms on an H100, too much to put on every tick). Each tick
  attaches the newest GPM result (computed over the last GPM interval) to the device's
  Sample. The Sample's `source` stays 'nvml': its row is an NVML reading. The GPM fields
  (`sm_active_pct`, `tensor_active_pct`, `dram_active_pct`) are filled from GPM and from
  nothing else, so their presence is what says "GPM" (`metrics.pcu` reports pcu_source
  'gpm' exactly when a sample carries `sm_active_pct`). Where GPM is unsupported or its
  result is stale they are None and PCU falls back to utilization.gpu ('nvml').
- A GPU lost mid-run is flagged in `status()` and sampled no more; the others go on.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from profiling.backends.base import Backend, WatchSet
from profiling.backends.nvml_errors import (
    NvmlDeviceLost,
    NvmlError,
    NvmlNoPermission,
    NvmlNotSupported,
    NvmlUnavailable,
)
from profiling.backends.nvml_types import GpmReading, Gpu, GpuProcess, GpuReading, pct
from profiling.backends.visible_devices import VisibleDevicesError, parse_visible_devices
from profiling.sample import Sample

try:
    import pynvml  # noqa: TID251 - the one module allowed to import it
except ImportError:  # nvidia-ml-py absent: the backend says so when asked for
    pynvml = None

log = logging.getLogger("profiling.backends.nvml")

MIN_GPM_INTERVAL_S = 0.1
"""NVML refreshes GPM counters every 100 ms; two samples closer than that are not valid."""


def _const(name: str, default: Any = None) -> Any:
    return getattr(pynvml, name, default) if pynvml is not None else default


# Read once, so a patched module (tests) still gives real values and exception classes.
_NVMLError: type[Exception] = _const("NVMLError", type("NVMLErrorMissing", (Exception,), {}))
_MismatchError: type[Exception] = _const("NVMLLibraryMismatchError",
                                         type("NVMLMismatchMissing", (Exception,), {}))
SUCCESS = _const("NVML_SUCCESS", 0)
ERR_NOT_SUPPORTED = _const("NVML_ERROR_NOT_SUPPORTED", 3)
ERR_NO_PERMISSION = _const("NVML_ERROR_NO_PERMISSION", 4)
ERR_NOT_FOUND = _const("NVML_ERROR_NOT_FOUND", 6)
ERR_DRIVER_NOT_LOADED = _const("NVML_ERROR_DRIVER_NOT_LOADED", 9)
ERR_LIBRARY_NOT_FOUND = _const("NVML_ERROR_LIBRARY_NOT_FOUND", 12)
ERR_FUNCTION_NOT_FOUND = _const("NVML_ERROR_FUNCTION_NOT_FOUND", 13)
ERR_GPU_IS_LOST = _const("NVML_ERROR_GPU_IS_LOST", 15)
ERR_RESET_REQUIRED = _const("NVML_ERROR_RESET_REQUIRED", 16)
ERR_LIB_RM_VERSION_MISMATCH = _const("NVML_ERROR_LIB_RM_VERSION_MISMATCH", 18)
ERR_GPU_NOT_FOUND = _const("NVML_ERROR_GPU_NOT_FOUND", 28)
ERR_UNINITIALIZED = _const("NVML_ERROR_UNINITIALIZED", 1)
_FI_POWER_INSTANT = _const("NVML_FI_DEV_POWER_INSTANT", 186)
_CLOCK_SM = _const("NVML_CLOCK_SM", 1)
_TEMPERATURE_GPU = _const("NVML_TEMPERATURE_GPU", 0)
_MEMORY_V2 = _const("nvmlMemory_v2")
_GPM_METRICS_GET_VERSION = _const("NVML_GPM_METRICS_GET_VERSION", 1)
GPM_SM_UTIL = _const("NVML_GPM_METRIC_SM_UTIL", 2)
GPM_ANY_TENSOR_UTIL = _const("NVML_GPM_METRIC_ANY_TENSOR_UTIL", 5)
GPM_DRAM_BW_UTIL = _const("NVML_GPM_METRIC_DRAM_BW_UTIL", 10)
_GPM_METRICS = (GPM_SM_UTIL, GPM_ANY_TENSOR_UTIL, GPM_DRAM_BW_UTIL)
_VALUE_ATTRS = {_const(k, i): attr for i, (k, attr) in enumerate((
    ("NVML_VALUE_TYPE_DOUBLE", "dVal"), ("NVML_VALUE_TYPE_UNSIGNED_INT", "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", "sllVal"), ("NVML_VALUE_TYPE_SIGNED_INT", "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", "usVal")))}

POWER_INSTANT = "instant (NVML_FI_DEV_POWER_INSTANT)"
POWER_AVERAGE = "average (nvmlDeviceGetPowerUsage, ~1 s window on Ampere and newer)"


# -- typed errors: the one mapping from NVML return codes -------------------------------------

_UNAVAILABLE_TEXT = {
    ERR_LIBRARY_NOT_FOUND: "NVML shared library not found (libnvidia-ml.so.1: no NVIDIA "
                           "driver installed on this machine, or not visible in this container)",
    ERR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded (check `nvidia-smi`)",
    ERR_LIB_RM_VERSION_MISMATCH: "NVIDIA driver/library version mismatch: the NVML library "
                                 "does not match the loaded kernel module (reboot, or reload "
                                 "the driver, after a driver upgrade)",
    ERR_NO_PERMISSION: "no permission to use NVML (check access to /dev/nvidia*)",
    ERR_UNINITIALIZED: "NVML is not initialized (it was shut down)",
}
_LOST_CODES = frozenset({ERR_GPU_IS_LOST, ERR_GPU_NOT_FOUND, ERR_NOT_FOUND, ERR_RESET_REQUIRED})
_NONE_CODES = frozenset({ERR_NOT_SUPPORTED, ERR_FUNCTION_NOT_FOUND})


def translate(e: BaseException) -> NvmlError | None:
    """The typed error for an NVML failure; None for "not supported" (the reading is None)."""
    if isinstance(e, _MismatchError):
        return None  # pynvml's "unversioned function missing from this driver": unsupported
    code = getattr(e, "value", None)
    if code in _NONE_CODES:
        return None
    text = f"{e}" or f"NVML error {code}"
    if code in _UNAVAILABLE_TEXT:
        cls = NvmlNoPermission if code == ERR_NO_PERMISSION else NvmlUnavailable
        return cls(_UNAVAILABLE_TEXT[code], code)
    if code in _LOST_CODES:
        return NvmlDeviceLost(text, code)
    return NvmlError(text, code)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an NVML function; NOT_SUPPORTED gives None, other failures raise typed errors."""
    try:
        return fn(*args, **kwargs)
    except (_NVMLError, _MismatchError) as e:
        typed = translate(e)
        if typed is None:
            return None
        raise typed from e


def _check_code(code: int) -> bool:
    """For per-item return codes (field values, GPM metrics): True on success, False when
    not supported; raises the typed error otherwise."""
    if code == SUCCESS:
        return True
    typed = translate(_NVMLError(code))
    if typed is None:
        return False
    raise typed


def nvml_api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for functions of this module that need NVML: initialise it once per
    process (never shut down: window readers live as long as the runner), and turn an
    absent `pynvml` into `NvmlUnavailable`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _ensure_init()
        return fn(*args, **kwargs)

    return wrapper


_init_lock = threading.Lock()
_initialised = False


def _require_pynvml() -> None:
    if pynvml is None:
        raise NvmlUnavailable("the nvidia-ml-py package (module pynvml) is not installed")


def _ensure_init() -> None:
    global _initialised
    _require_pynvml()
    with _init_lock:
        if not _initialised:
            _call(pynvml.nvmlInit)
            _initialised = True


def _reset_process_session() -> None:
    """Forget the process-wide NVML session (tests)."""
    global _initialised
    with _init_lock:
        _initialised = False


# -- readings ---------------------------------------------------------------------------------

def _field_value(v: Any) -> float | None:
    """The number in one nvmlFieldValue_t, None when not supported."""
    if not _check_code(v.nvmlReturn):
        return None
    attr = _VALUE_ATTRS.get(v.valueType)
    return float(getattr(v.value, attr)) if attr else None


def _probe(gpu: Gpu) -> None:
    """Decide, once, how each of this GPU's readings is taken."""
    h = gpu.handle
    gpu.name = _call(pynvml.nvmlDeviceGetName, h)
    gpu.uuid = _call(pynvml.nvmlDeviceGetUUID, h)
    gpu.memory_api = "v1"
    try:
        if _MEMORY_V2 is not None and _call(pynvml.nvmlDeviceGetMemoryInfo, h,
                                            version=_MEMORY_V2) is not None:
            gpu.memory_api = "v2"
    except NvmlDeviceLost:
        raise
    except NvmlError:  # e.g. ARGUMENT_VERSION_MISMATCH from a driver older than v2
        pass
    try:
        instant = _instant_power_mw(h)
    except NvmlDeviceLost:
        raise
    except NvmlError:
        instant = None
    if instant is not None:
        gpu.power_api = POWER_INSTANT
    elif _call(pynvml.nvmlDeviceGetPowerUsage, h) is not None:
        gpu.power_api = POWER_AVERAGE
    query = getattr(pynvml, "nvmlGpmQueryDeviceSupport", None)
    try:
        support = _call(query, h) if query is not None else None
        if support is None or not support.isSupportedDevice:
            gpu.gpm_note = "unsupported by this GPU or driver (needs Hopper or newer)"
        else:
            gpu.gpm_buffers = [_call(pynvml.nvmlGpmSampleAlloc),
                               _call(pynvml.nvmlGpmSampleAlloc)]
            gpu.gpm_note = "supported"
    except NvmlDeviceLost:
        raise
    except NvmlError as e:  # e.g. refused inside a VM: NVML readings go on without GPM
        _free_gpm(gpu)
        gpu.gpm_note = f"unavailable: {e}"


def _instant_power_mw(handle: Any) -> float | None:
    fields = _call(pynvml.nvmlDeviceGetFieldValues, handle, [_FI_POWER_INSTANT])
    return _field_value(fields[0]) if fields else None


def _read(gpu: Gpu) -> GpuReading:
    """One sweep of `gpu`; a failed reading is None (counted), a lost GPU raises."""

    def get(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        error: NvmlError
        try:
            return _call(fn, *args, **kwargs)
        except (NvmlDeviceLost, NvmlUnavailable) as e:
            if not isinstance(e, NvmlNoPermission):
                raise  # the GPU or NVML itself is gone: not a matter of one reading
            error = e
        except NvmlError as e:
            error = e
        gpu.read_errors += 1
        gpu.last_error = f"{what}: {error}"
        return None

    h = gpu.handle
    used = total = reserved = None
    mem = get("memory", pynvml.nvmlDeviceGetMemoryInfo, h, version=_MEMORY_V2) \
        if gpu.memory_api == "v2" else get("memory", pynvml.nvmlDeviceGetMemoryInfo, h)
    if mem is not None:
        used, total = int(mem.used), int(mem.total)
        reserved = int(mem.reserved) if gpu.memory_api == "v2" else None
    util = get("utilization", pynvml.nvmlDeviceGetUtilizationRates, h)
    power_w = None
    if gpu.power_api == POWER_INSTANT:
        mw = get("power", _instant_power_mw, h)
        power_w = mw / 1000.0 if mw is not None else None
    elif gpu.power_api == POWER_AVERAGE:
        mw = get("power", pynvml.nvmlDeviceGetPowerUsage, h)
        power_w = mw / 1000.0 if mw is not None else None
    clock = get("SM clock", pynvml.nvmlDeviceGetClockInfo, h, _CLOCK_SM)
    temp = get("temperature", pynvml.nvmlDeviceGetTemperature, h, _TEMPERATURE_GPU)
    return GpuReading(mem_used_bytes=used, mem_total_bytes=total, mem_reserved_bytes=reserved,
                      util_pct=float(util.gpu) if util is not None else None, power_w=power_w,
                      sm_clock_mhz=float(clock) if clock is not None else None,
                      temp_c=float(temp) if temp is not None else None)


def _free_gpm(gpu: Gpu) -> None:
    for buf in gpu.gpm_buffers:
        try:
            _call(pynvml.nvmlGpmSampleFree, buf)
        except NvmlError:
            pass
    gpu.gpm_buffers = []
    gpu.gpm_prev = None


def _gpm_poll(gpu: Gpu, mono_s: float, t_ns: int, interval_s: float) -> GpmReading | None:
    """Take a GPM sample; with an earlier one >= interval_s old, compute the metrics."""
    prev = gpu.gpm_prev
    if prev is not None and mono_s - prev[1] < interval_s - 1e-6:  # float slack only
        return None
    buf = gpu.gpm_buffers[0] if prev is None or prev[0] is not gpu.gpm_buffers[0] \
        else gpu.gpm_buffers[1]
    if _call(pynvml.nvmlGpmSampleGet, gpu.handle, buf) is None:
        gpu.gpm_note = "unsupported (nvmlGpmSampleGet: not supported)"
        _free_gpm(gpu)
        gpu.gpm = None
        return None
    gpu.gpm_prev = (buf, mono_s, t_ns)
    if prev is None:
        return None
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version = _GPM_METRICS_GET_VERSION
    mg.numMetrics = len(_GPM_METRICS)
    mg.sample1 = prev[0]
    mg.sample2 = buf
    for i, metric in enumerate(_GPM_METRICS):
        mg.metrics[i].metricId = metric
    if _call(pynvml.nvmlGpmMetricsGet, mg) is None:
        return None
    values: list[float | None] = []
    for i in range(len(_GPM_METRICS)):
        m = mg.metrics[i]
        values.append(pct(m.value) if _check_code(m.nvmlReturn) else None)
    reading = GpmReading(t_ns=t_ns, mono_s=mono_s, interval_s=mono_s - prev[1],
                         sm_active_pct=values[0], tensor_active_pct=values[1],
                         dram_active_pct=values[2])
    gpu.gpm = reading
    return reading


# -- the backend ------------------------------------------------------------------------------

class NvmlBackend(Backend):
    """Every (or the chosen) NVIDIA GPU as devices 'gpu<NVML index>', source 'nvml'."""

    name = "nvml"

    def __init__(self, watch_set: WatchSet | None = None, *, host: str | None = None,
                 indices: Sequence[int] | None = None, gpm: bool = True,
                 gpm_interval_s: float = MIN_GPM_INTERVAL_S, gpm_thread: bool = True,
                 gpm_stale_s: float | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        """Initialise NVML and probe each GPU.

        Args:
            watch_set: the daemon's runner pids (own processes when telling foreign ones).
            host: host name written in every sample; socket.gethostname() when None.
            indices: NVML indices to sample; every GPU when None.
            gpm: take GPM metrics where the GPU supports them.
            gpm_interval_s: seconds between GPM samples (at least 0.1).
            gpm_thread: take GPM samples on a thread of their own; False takes them inside
                `sample()` when due (tests, single-threaded tools).
            gpm_stale_s: a GPM result older than this is not attached (default: 5
                intervals, at least 1 s).
            mono: monotonic clock in seconds (tests pass a fake).

        Raises:
            NvmlUnavailable: no library, no driver, mismatch, no permission, no GPU.
        """
        _require_pynvml()
        if gpm_interval_s < MIN_GPM_INTERVAL_S:
            raise ValueError(f"gpm_interval_s must be >= {MIN_GPM_INTERVAL_S} s (NVML "
                             f"refreshes GPM counters every 100 ms), got {gpm_interval_s}")
        self.watch_set = watch_set if watch_set is not None else WatchSet()
        self.host = host or socket.gethostname()
        self.gpm_interval_s = gpm_interval_s
        self.gpm_stale_s = gpm_stale_s if gpm_stale_s is not None \
            else max(1.0, 5 * gpm_interval_s)
        self._mono = mono
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gpm_thread: threading.Thread | None = None
        _call(pynvml.nvmlInit)
        self._open = True
        try:
            self.driver_version = _call(pynvml.nvmlSystemGetDriverVersion)
            count = _call(pynvml.nvmlDeviceGetCount) or 0
            wanted = list(range(count)) if indices is None else list(indices)
            bad = [i for i in wanted if not 0 <= i < count]
            if bad:
                raise NvmlUnavailable(f"no GPU with NVML index {bad} (this machine has {count})")
            if not wanted:
                raise NvmlUnavailable("NVML found no GPU on this machine")
            self._gpus = [Gpu(i, _call(pynvml.nvmlDeviceGetHandleByIndex, i)) for i in wanted]
            for gpu in self._gpus:
                try:
                    _probe(gpu)
                except NvmlDeviceLost as e:
                    self._mark_lost(gpu, e)
                if not gpm and gpu.gpm_buffers:
                    _free_gpm(gpu)
                    gpu.gpm_note = "off (disabled)"
        except BaseException:
            self.close()
            raise
        self._gpm_inline = not gpm_thread
        if gpm_thread and any(g.gpm_buffers for g in self._gpus):
            self._gpm_thread = threading.Thread(target=self._gpm_loop, name="gpm", daemon=True)
            self._gpm_thread.start()

    def devices(self) -> list[str]:
        return [g.device for g in self._gpus]

    @property
    def gpus(self) -> list[int]:
        """NVML indices of the sampled GPUs."""
        return [g.index for g in self._gpus]

    def sample(self, now_ns: int) -> list[Sample]:
        mono = self._mono()
        if self._gpm_inline:
            self.poll_gpm(mono, now_ns)
        out = []
        for gpu in self._gpus:
            if gpu.lost:
                continue
            try:
                r = _read(gpu)
            except NvmlDeviceLost as e:
                self._mark_lost(gpu, e)
                continue
            g = gpu.gpm
            fresh = g is not None and mono - g.mono_s <= self.gpm_stale_s
            out.append(Sample(
                t_ns=now_ns, host=self.host, device=gpu.device, source="nvml",
                mem_used_bytes=r.mem_used_bytes, mem_total_bytes=r.mem_total_bytes,
                util_pct=r.util_pct, power_w=r.power_w, sm_clock_mhz=r.sm_clock_mhz,
                temp_c=r.temp_c,
                sm_active_pct=g.sm_active_pct if fresh and g else None,
                tensor_active_pct=g.tensor_active_pct if fresh and g else None,
                dram_active_pct=g.dram_active_pct if fresh and g else None))
        return out

    def read(self, index: int) -> GpuReading:
        """One sweep of the GPU with NVML index `index` (raises NvmlDeviceLost)."""
        for gpu in self._gpus:
            if gpu.index == index:
                return _read(gpu)
        raise KeyError(f"NVML index {index} is not sampled here")

    def poll_gpm(self, mono_s: float | None = None, t_ns: int | None = None) -> None:
        """Take a GPM sample on every GPU whose last one is at least one interval old."""
        mono_s = self._mono() if mono_s is None else mono_s
        t_ns = time.time_ns() if t_ns is None else t_ns
        with self._lock:
            if not self._open:
                return
            for gpu in self._gpus:
                if gpu.lost or not gpu.gpm_buffers:
                    continue
                try:
                    _gpm_poll(gpu, mono_s, t_ns, self.gpm_interval_s)
                except NvmlDeviceLost as e:
                    self._mark_lost(gpu, e)
                except NvmlError as e:
                    gpu.read_errors += 1
                    gpu.last_error = f"GPM: {e}"

    def _gpm_loop(self) -> None:
        next_t = self._mono()
        while not self._stop.is_set():
            try:
                self.poll_gpm()
            except Exception:  # noqa: BLE001 - GPM must not die on one bad sample
                log.exception("GPM sampling failed")
            next_t += self.gpm_interval_s
            now = self._mono()
            if now > next_t + self.gpm_interval_s:
                next_t = now  # late (suspend, overload): restart the schedule
            # A hair late rather than early: two samples < 100 ms apart are discarded.
            self._stop.wait(max(0.0, next_t - now) + 0.0005)

    def _mark_lost(self, gpu: Gpu, e: Exception) -> None:
        if not gpu.lost:
            gpu.lost = True
            gpu.lost_reason = f"{e}"
            log.error("GPU %s (NVML index %d, %s) is lost: %s; it is sampled no more",
                      gpu.device, gpu.index, gpu.uuid, e)

    def lost_devices(self) -> list[str]:
        return [g.device for g in self._gpus if g.lost]

    def status(self) -> dict[str, Any]:
        own = set(self.watch_set.pids())
        devices = {}
        for gpu in self._gpus:
            st = gpu.status()
            if not gpu.lost and own:
                try:
                    st["foreign_pids"] = _foreign(gpu.handle, own)
                except NvmlError as e:
                    st["foreign_pids"] = None
                    st["foreign_note"] = f"{e}"
            devices[gpu.device] = st
        return {"driver": self.driver_version, "gpm_interval_s": self.gpm_interval_s,
                "gpm_thread": self._gpm_thread is not None, "devices": devices,
                "lost": self.lost_devices()}

    def close(self) -> None:
        self._stop.set()
        if self._gpm_thread is not None:
            self._gpm_thread.join(timeout=2)
        with self._lock:
            if not getattr(self, "_open", False):
                return
            self._open = False
            for gpu in getattr(self, "_gpus", []):
                _free_gpm(gpu)
            try:
                _call(pynvml.nvmlShutdown)
            except NvmlError:
                pass


# -- processes on a device ------------------------------------------------------------------

def _processes(handle: Any) -> list[GpuProcess]:
    """Compute and graphics processes of one GPU, by pid; raises NvmlNotSupported when the
    driver lists neither."""
    compute = _call(pynvml.nvmlDeviceGetComputeRunningProcesses, handle)
    graphics = _call(pynvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
    if compute is None and graphics is None:
        raise NvmlNotSupported("this driver does not list the processes on the GPU")
    used: dict[int, int | None] = {}
    for p in (compute or []) + (graphics or []):
        pid = int(p.pid)
        raw = getattr(p, "usedGpuMemory", None)  # pynvml: None for NVML_VALUE_NOT_AVAILABLE
        mem = int(raw) if raw is not None else None
        old = used.get(pid)
        used[pid] = mem if old is None else old if mem is None else max(old, mem)
    return [GpuProcess(pid, mem) for pid, mem in sorted(used.items())]


def _foreign(handle: Any, own_pids: Iterable[int]) -> list[int]:
    own = set(own_pids)
    return sorted({p.pid for p in _processes(handle)} - own)


@nvml_api
def foreign_processes(index: int, own_pids: Iterable[int]) -> list[int]:
    """Pids of the processes holding a context on GPU `index` (NVML index) that are not in
    `own_pids`.

    A plain pid comparison: in a container NVML may report host pids, which never match
    own pids. A run's verdict uses `profiling.backends.contention`, which tells them apart. Raises
    NvmlNotSupported when the driver cannot list them.
    """
    return _foreign(_call(pynvml.nvmlDeviceGetHandleByIndex, index), own_pids)


@nvml_api
def gpu_process_reader(index: int) -> tuple[Callable[[], list[GpuProcess]], int | None]:
    """(reader, minor) for GPU `index`: the reader lists its processes with their memory
    (raising NvmlNotSupported where the driver cannot, typed errors otherwise); minor is the
    GPU's /dev/nvidia<minor> number, None where NVML does not say."""
    handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
    try:
        minor = _call(pynvml.nvmlDeviceGetMinorNumber, handle)
    except NvmlError:
        minor = None
    return functools.partial(_processes, handle), int(minor) if minor is not None else None


# -- energy counter ---------------------------------------------------------------------------

@nvml_api
def nvml_energy_reader(index: int) -> Callable[[], float | None]:
    """A reader of GPU `index`'s cumulative energy counter in joules, for WindowMeter.

    nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded; Volta and newer). A
    read costs about 4 ms on an H100, so read it only at window edges. The reader returns
    None once the GPU is lost or NVML fails; a driver reload resets the counter, which
    WindowMeter reports as a reset.

    Raises:
        NvmlNotSupported: this GPU has no energy counter.
        NvmlUnavailable / NvmlDeviceLost: NVML cannot reach the GPU.
    """
    handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
    if _call(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle) is None:
        raise NvmlNotSupported(f"GPU {index} has no energy counter")

    def read() -> float | None:
        try:
            mj = _call(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        except NvmlError as e:
            log.warning("energy counter of GPU %d unreadable: %s", index, e)
            return None
        return mj / 1000.0 if mj is not None else None

    return read


# -- CUDA device -> NVML index ----------------------------------------------------------------

@nvml_api
def _gpu_uuids() -> list[str]:
    count = _call(pynvml.nvmlDeviceGetCount) or 0
    return [_call(pynvml.nvmlDeviceGetUUID, _call(pynvml.nvmlDeviceGetHandleByIndex, i))
            for i in range(count)]


@nvml_api
def nvml_index_for_cuda(n: int, env: Mapping[str, str] = os.environ) -> int:
    """The NVML index of the GPU a process with environment `env` calls `cuda:n`.

    NVML numbers GPUs by PCI bus id; CUDA numbers the GPUs of CUDA_VISIBLE_DEVICES in its
    order, and without it all GPUs, fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID. On a
    machine of identical GPUs both orders agree; on a mixed one a warning is logged.

    Raises:
        VisibleDevicesError: cuda:n is not visible, or CUDA_VISIBLE_DEVICES names MIG.
        NvmlUnavailable: NVML cannot be used.
    """
    if n < 0:
        raise VisibleDevicesError(f"cuda:{n} is not a device")
    count = _call(pynvml.nvmlDeviceGetCount) or 0
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        visible = list(range(count))
        if count > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            names = {_call(pynvml.nvmlDeviceGetName, _call(pynvml.nvmlDeviceGetHandleByIndex, i))
                     for i in range(count)}
            if len(names) > 1:
                log.warning("GPUs of several kinds and CUDA_DEVICE_ORDER is not PCI_BUS_ID: "
                            "CUDA's numbering may differ from NVML's; set "
                            "CUDA_DEVICE_ORDER=PCI_BUS_ID")
    else:
        visible = parse_visible_devices(value, count, _gpu_uuids)
    if n >= len(visible):
        shown = "unset" if value is None else repr(value)
        raise VisibleDevicesError(f"cuda:{n} is not visible: CUDA_VISIBLE_DEVICES={shown} "
                                  f"leaves {len(visible)} of {count} GPU(s) visible")
    return visible[n]
