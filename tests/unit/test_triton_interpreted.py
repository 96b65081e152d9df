"""The runners' Triton kernels' math on CPU, in Triton's interpreter: Mamba's selective scan
(runners.kernels.scan_triton) against the chunked torch scan and, where fla-core is installed,
RWKV's WKV on fla's kernel (runners.kernels.rwkv_wkv) against the float64 loop, output and
every gradient, on shapes that exercise the masks and the partial last chunk. The same
kernels compiled for a GPU are checked in tests/gpu.
scripts/setup.sh installs Triton where torch did not bring it (CPU builds)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("interpreted_kernels.py")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (scripts/setup.sh installs it)")


def test_kernels_in_the_interpreter_match_the_torch_references() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    wkv = {"wkv_b2_T40_C40_k1", "wkv_b1_T30_C20_k30"} \
        if importlib.util.find_spec("fla") is not None else set()
    assert set(errors) == {"scan_b2_d12_T45_n4", "scan_b1_d5_T23_n3"} | wkv
    for case, by_output in errors.items():
        want = {"y", "u", "delta", "A", "B", "C"} if case.startswith("scan") else \
            {"y", "time_decay", "time_first", "key", "value"}
        assert set(by_output) == want
        # float32 against the float32 chunked scan / the float64 loop: rounding only (the
        # large-key WKV case carries float32's rounding of exponents near 100)
        limit = 5e-5 if case.endswith("k30") else 2e-6
        for name, error in by_output.items():
            assert error < limit, (case, name, error)
