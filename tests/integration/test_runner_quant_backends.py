"""`--set backend` through the runner on the tiny model, on CPU: the backend that ran is
stored with the run, and one that cannot run here makes the run `unsupported` with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runners.techniques import quant_backends as qb

from .test_runner_inference import SMALL, execute_here

pytestmark = pytest.mark.slow


def test_auto_runs_quanto_on_the_cpu_and_stores_the_choice(tmp_path: Path) -> None:
    run, code = execute_here(tmp_path, "int8-auto", technique="int8",
                             params={"threads": 1}, **SMALL)
    assert code == 0, run.err
    events = run.events()
    quantize = next(e for e in events if e.kind == "phase" and e.get("name") == "quantize")
    assert (quantize.get("backend"), quantize.get("weights")) == ("quanto", "qint8")
    assert events[-1].kind == "result"
    info = events[-1].get("info")
    q = info["quantization"]
    assert (q["backend"], q["backend_asked"], q["weights"], q["dynamic_activations"]) == (
        "quanto", "auto", "qint8", None)
    assert q["weight_classes"] == {"Tensor": 1, "WeightQBytesTensor": 28}


def test_a_gpu_only_backend_on_the_cpu_is_stored_unsupported(tmp_path: Path) -> None:
    run, code = execute_here(tmp_path, "int4-gemlite", technique="int4",
                             params={"threads": 1, "backend": "gemlite"}, **SMALL)
    assert code == 1
    error = run.events()[-1]
    assert (error.kind, error.get("type")) == ("error", "unsupported")
    reason = qb.why_not("gemlite", "int4", "cpu", torch.float32)
    assert error.get("message") == f"int4 on gemlite: {reason}"
