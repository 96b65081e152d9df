"""GPU-marked tests: they need torch with a CUDA device and the NVIDIA driver (NVML).

Run them on a GPU machine with `python -m pytest -m gpu tests/gpu`; elsewhere every test
here is skipped, never failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    if not mine:
        return  # this hook sees the whole session; import torch only for tests here
    try:
        import torch

        ok = torch.cuda.is_available()
        why = "torch sees no CUDA device"
    except ImportError:
        ok, why = False, "torch is not installed"
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if not ok:
            item.add_marker(pytest.mark.skip(reason=why))
