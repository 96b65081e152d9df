"""The inference metrics against hand-computed values: latency, throughput by phase,
energy by phase, roofline, MFU and MCR."""

from __future__ import annotations

import pytest

from profiling.window import WindowResult
from runners.engines.decode import RequestTiming
from runners.families.inference_metrics import Measured, inference_metrics
from runners.techniques.quality import Reference


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
    # MFU: 2N FLOPs per forwarded token; each of the 4 sequences forwards its 50 prompt
    # tokens and 9 decode steps (the first new token comes from the prefill), in 3 s, over
    # 1 TFLOP/s (no attention term: n_layers defaults to 0)
    assert v["mfu"] == pytest.approx(4 * 2e6 * 59 / 3.0 / 1e12)
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


def test_mfu_counts_the_attention_term() -> None:
    v = {m.name: m.value for m in inference_metrics(_measured(n_layers=2, d_attn=8))}
    # per sequence: 59 forwarded tokens, token t attending over t positions:
    # 2N x 59 + 4 x L x d x (1 + ... + 59) = 2e6 x 59 + 4 x 2 x 8 x 1770
    per_seq = 2e6 * 59 + 4 * 2 * 8 * 1770
    assert v["mfu"] == pytest.approx(4 * per_seq / 3.0 / 1e12)


def test_missing_values_say_why() -> None:
    no_counter = WindowResult(name="measure", device="cpu", t0_ns=0, t1_ns=3_000_000_000,
                              energy_j=None, energy_source=None, elapsed_s=3.0,
                              energy_note="no CPU energy counter: no RAPL package zones")
    metrics = {m.name: m for m in inference_metrics(_measured(
        window=no_counter, prefill_window=None, peak_tflops=None, mem_bw_gbps=None,
        ppl=None, reference=None, quality_note="random weights: no quality signal"))}
    for name in ("energy_j", "aec_w", "j_per_token", "decode_energy_j"):
        assert (metrics[name].source, metrics[name].note) == (
            "none", "no CPU energy counter: no RAPL package zones"), name
    assert metrics["prefill_energy_j"].note == "prefill not replayed alone (phase_windows off)"
    for name in ("eval_ppl", "mcr", "reference_ppl"):
        assert (metrics[name].value, metrics[name].source, metrics[name].note) == (
            None, "none", "random weights: no quality signal"), name
    assert metrics["mfu"].note is not None and metrics["mfu"].note.startswith("no peak FLOP/s")
    assert metrics["roofline_fraction"].note.startswith("no memory bandwidth")
    # a measured value carries no note and keeps its source
    assert (metrics["al_s"].source, metrics["al_s"].note) == ("runner", None)
    assert all(m.note for m in metrics.values() if m.value is None)
