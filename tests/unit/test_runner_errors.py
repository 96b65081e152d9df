"""Every way a run can end maps to one error type and exit code."""

from __future__ import annotations

import pytest
import torch

from runners.errors import (
    BadInput,
    Cancelled,
    OutOfMemory,
    Unsupported,
    classify,
    is_oom,
    one_line,
)
from runners.protocol import ProtocolError


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    MemoryError(),
    OutOfMemory("model needs 55 GiB"),
])
def test_oom(exc: BaseException) -> None:
    assert is_oom(exc)
    kind, message, code = classify(exc)
    assert (kind, code) == ("oom", 1)
    assert "\n" not in message


@pytest.mark.parametrize(("exc", "expected"), [
    (BadInput("unknown model"), ("bad_input", "unknown model", 2)),
    (ProtocolError("invalid run_id"), ("bad_input", "invalid run_id", 2)),
    (Unsupported("not implemented yet"), ("unsupported", "not implemented yet", 1)),
    (Cancelled("SIGTERM"), ("crash", "cancelled", 1)),
    (ValueError("bad thing\nsecond line"), ("crash", "ValueError: bad thing", 1)),
])
def test_classify(exc: BaseException, expected: tuple[str, str, int]) -> None:
    assert classify(exc) == expected


def test_one_line_truncates() -> None:
    assert len(one_line(RuntimeError("x" * 2000))) == 500
    assert one_line(KeyError()) == "KeyError"
