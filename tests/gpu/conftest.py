"""GPU-marked tests: they need torch with a CUDA device and the NVIDIA driver (NVML).

Run them on a GPU machine with `python -m pytest -m gpu tests/gpu`; elsewhere every test
here is skipped, never failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        ok = torch.cuda.is_available()
        why = "torch sees no CUDA device"
    except ImportError:
        ok, why = False, "torch is not installed"
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue  # this hook sees the whole session: touch only the tests here
        item.add_marker(pytest.mark.gpu)
        if not ok:
            item.add_marker(pytest.mark.skip(reason=why))
