"""Runner errors, each carrying the protocol's error type and the runner's exit code.

Foreign errors (torch OOM, a protocol violation) are translated into these in one place,
`classify`, so `__main__` reports every failure the same way.
"""

from __future__ import annotations

from runners.protocol import ProtocolError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class RunnerError(Exception):
    """A run that could not finish; its message is one line a user can act on."""

    error_type = "crash"
    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(RunnerError):
    """Unknown model or technique, a pair that does not belong together, an unreadable dataset."""

    error_type = "bad_input"
    exit_code = EXIT_BAD_INPUT


class Unsupported(RunnerError):
    """A valid request this runner cannot run here (not implemented, or not on this device)."""

    error_type = "unsupported"


class OutOfMemory(RunnerError):
    """The run would not fit, found before allocating (a torch OOM is translated to this too)."""

    error_type = "oom"


class Cancelled(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException so no `except Exception` swallows it."""


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError, MemoryError and allocator RuntimeErrors."""
    if isinstance(exc, (MemoryError, OutOfMemory)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda / torch.OutOfMemoryError
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _OOM_MARKERS)
    return False


def one_line(exc: BaseException) -> str:
    """The exception as one short line: `Type: first line of the message`."""
    text = str(exc).strip().splitlines()
    head = text[0] if text else ""
    name = type(exc).__name__
    line = f"{name}: {head}" if head else name
    return line if len(line) <= 500 else line[:497] + "..."


def classify(exc: BaseException) -> tuple[str, str, int]:
    """(error type, one-line message, exit code) for any exception a run can end with."""
    if isinstance(exc, Cancelled):
        return "crash", "cancelled", EXIT_FAILED
    if is_oom(exc):
        message = exc.message if isinstance(exc, OutOfMemory) else one_line(exc)
        return "oom", message, EXIT_FAILED
    if isinstance(exc, RunnerError):
        return exc.error_type, exc.message, exc.exit_code
    if isinstance(exc, ProtocolError):
        return "bad_input", str(exc), EXIT_BAD_INPUT
    return "crash", one_line(exc), EXIT_FAILED
