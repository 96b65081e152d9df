"""Device resolution in the runner process: `auto`/`cuda`/`cuda:N` to a resolved device, a
missing GPU as a clear `Unsupported`, and the resolved GPU made the current CUDA device."""

from __future__ import annotations

import pytest
import torch

from runners.errors import Unsupported
from runners.system import device as dev


def test_resolve_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve("auto") == "cpu" and dev.resolve("cpu") == "cpu"
    with pytest.raises(Unsupported, match="torch sees no CUDA device"):
        dev.resolve("cuda:1")


def test_resolve_with_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [dev.resolve(d) for d in ("auto", "cuda", "cuda:1")] == ["cuda:0", "cuda:0", "cuda:1"]
    with pytest.raises(Unsupported, match=r"has 2 CUDA device\(s\) \(cuda:0-cuda:1\)"):
        dev.resolve("cuda:2")


def test_the_resolved_gpu_becomes_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton launches and CUDA graph capture go to the current device, not the tensors'."""
    made: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", made.append)
    dev.make_current("cpu")
    assert made == []
    dev.make_current("cuda:1")
    dev.make_current("cuda:0")
    assert made == [1, 0]
