"""The typed NVML errors. `profiling.backends.nvml` maps NVML return codes to them (`translate`)."""

from __future__ import annotations

from profiling.backends.base import BackendUnavailable


class NvmlError(Exception):
    """An NVML call failed; `code` is the NVML return code (None when not from NVML)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NvmlUnavailable(NvmlError, BackendUnavailable):
    """NVML cannot be used on this machine: no library, no driver, mismatch, no permission."""


class NvmlNoPermission(NvmlUnavailable):
    """NVML refused for lack of permission (a whole backend, or one reading)."""


class NvmlDeviceLost(NvmlError):
    """The GPU fell off the bus, needs a reset, or is no longer found."""


class NvmlNotSupported(NvmlError):
    """A feature the device or driver does not have (raised only where None cannot say it)."""
