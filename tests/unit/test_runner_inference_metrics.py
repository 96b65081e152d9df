"""The inference metrics against hand-computed values: latency, throughput by phase,
energy by phase, roofline, MFU and MCR."""

from __future__ import annotations

import pytest

from profiling.window import WindowResult
from runners.decode import RequestTiming
from runners.inference import _counted
from runners.inference_metrics import Measured, inference_metrics
from runners.quality import Reference


def _window(name: str, seconds: float, energy: float | None) -> WindowResult:
    return WindowResult(name=name, device="gpu0", t0_ns=0, t1_ns=int(seconds * 1e9),
                        energy_j=energy, energy_source="nvml" if energy is not None else None,
                        elapsed_s=seconds)


def _measured(**kw: object) -> Measured:
    base: dict[str, object] = dict(
        # two requests of batch 2: prefill 0.1 s, then 10 tokens in 1.0 s and 1.9 s
        timings=(RequestTiming(latency_s=1.0, ttft_s=0.1), RequestTiming(latency_s=1.9,
                                                                         ttft_s=0.1)),
        window=_window("measure", 3.0, 600.0), prefill_window=_window("prefill", 0.2, 40.0),
        batch_size=2, prompt_tokens=50, new_tokens=10, total_params=1_000_000,
        weight_bytes=500_000, peak_allocated_gib=1.0, peak_reserved_gib=1.5, peak_rss_gib=2.0,
        ppl=12.0, reference=Reference("bfloat16", 2_000_000, 10.0), peak_tflops=1.0,
        mem_bw_gbps=1.0)
    base.update(kw)
    return Measured(**base)  # type: ignore[arg-type]


def test_metrics_by_hand() -> None:
    v = {m.name: m.value for m in inference_metrics(_measured())}
    assert v["al_s"] == pytest.approx(1.45)
    assert v["ttft_s"] == pytest.approx(0.1)
    # TPOT: (1.0 - 0.1) / 9 = 0.1 and (1.9 - 0.1) / 9 = 0.2
    assert v["tpot_s"] == pytest.approx(0.15) and v["tpot_p50_s"] == pytest.approx(0.15)
    assert v["it"] == pytest.approx(2 * 2 * 10 / 3.0)
    assert v["prefill_tokens_per_s"] == pytest.approx(2 * 50 / 0.1)
    assert v["decode_tokens_per_s"] == pytest.approx(2 / 0.15)
    # roofline: 1 GB/s over 0.5 MB of weights = 2000 steps/s, 2 tokens a step
    assert v["roofline_fraction"] == pytest.approx((2 / 0.15) / 4000)
    assert v["energy_j"] == 600 and v["aec_w"] == pytest.approx(200)
    assert v["j_per_token"] == pytest.approx(600 / 40)
    assert v["prefill_energy_j"] == 40 and v["prefill_j_per_token"] == pytest.approx(40 / 200)
    assert v["decode_energy_j"] == 560 and v["decode_j_per_token"] == pytest.approx(560 / 36)
    # MFU: 2N FLOPs per token, 200 prompt + 40 generated tokens in 3 s, over 1 TFLOP/s
    assert v["mfu"] == pytest.approx(2e6 * 240 / 3.0 / 1e12)
    # MCR: (2 MB / 0.5 MB) x (1/12) / (1/10)
    assert v["compression_ratio"] == pytest.approx(4.0)
    assert v["mcr"] == pytest.approx(4.0 * 10 / 12)
    assert v["reference_ppl"] == 10.0 and v["reference_weight_bytes"] == 2_000_000


def test_unknowns_stay_none() -> None:
    v = {m.name: m.value for m in inference_metrics(_measured(
        window=_window("measure", 3.0, None), prefill_window=None, reference=None,
        peak_tflops=None, mem_bw_gbps=None, ppl=None, new_tokens=1,
        timings=(RequestTiming(0.1, 0.1),)))}
    for name in ("energy_j", "aec_w", "j_per_token", "prefill_energy_j", "decode_energy_j",
                 "decode_j_per_token", "roofline_fraction", "mfu", "mcr", "compression_ratio",
                 "reference_ppl", "eval_ppl", "tpot_s", "decode_tokens_per_s"):
        assert v[name] is None, name


def test_a_counter_that_did_not_move_is_unknown() -> None:
    still = _counted(_window("measure", 0.04, 0.0))
    assert still.energy_j is None and "did not advance" in (still.energy_note or "")
    moved = _window("measure", 1.0, 250.0)
    assert _counted(moved) is moved
