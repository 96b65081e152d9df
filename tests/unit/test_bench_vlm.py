"""benchmarks/bench_vlm.py --smoke: every technique's case runs on CPU with tiny-vlm through
the runner's model, quantization and engine code, and its figures hold together."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_measures_every_technique(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_vlm", ROOT / "benchmarks" /
                                                  "bench_vlm.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_vlm"] = bench
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path), "--home", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "bench_vlm.json").read_text())["cases"]
    assert [(c["technique"], c["batch"]) for c in cases] == [("fp32", 2), ("int8", 2),
                                                             ("int4", 2)]
    size = {c["technique"]: c["weight_bytes"] for c in cases}
    # the language model alone is quantized: the fp32 vision tower and projector remain
    assert size["fp32"] == 16_736_768 and size["int4"] < size["int8"] < size["fp32"] / 3
    for c in cases:
        assert c["image_tokens"] == 16 and c["backend" if c["technique"] != "fp32"
                                              else "dtype"] in ("quanto", "float32")
        assert c["vision_share"] == pytest.approx(c["vision_ms"] / c["ttft_ms"])
        assert 0 < c["vision_ms"] < c["ttft_ms"]
        assert c["decode_tok_s"] == pytest.approx(2 / (c["tpot_ms"] / 1e3))
