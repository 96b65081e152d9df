"""The metric math against hand-computed traces."""

from __future__ import annotations

import math
import statistics
import time

import pytest

from profiling import metrics as m
from profiling.sample import Sample

S = 1_000_000_000  # one second in ns


def ts(*seconds: float) -> list[int]:
    return [int(x * S) for x in seconds]


class TestTimeWeightedMean:
    def test_regular_ramp(self) -> None:
        assert m.time_weighted_mean(ts(0, 1, 2, 3), [0, 10, 20, 30], 0, 3 * S) == 15

    def test_irregular_spacing(self) -> None:
        # [0,1]: (0+10)/2*1 = 5; [1,4]: 10*3 = 30 -> 35 / 4 s
        assert m.time_weighted_mean(ts(0, 1, 4), [0, 10, 10], 0, 4 * S) == 8.75

    def test_clipped_inside_one_interval(self) -> None:
        # the line 0 -> 10 over [0,10] s, window [2,4]: values 2..4, mean 3
        assert m.time_weighted_mean(ts(0, 10), [0, 10], 2 * S, 4 * S) == pytest.approx(3.0)

    def test_clipped_at_both_edges(self) -> None:
        # 0 -> 4 -> 0 over [0,4,8]; window [2,6]: [2,4] 2..4 = 6, [4,6] 4..2 = 6 -> 12 / 4
        assert m.time_weighted_mean(ts(0, 4, 8), [0, 4, 0], 2 * S, 6 * S) == pytest.approx(3.0)

    def test_none_splits_segments(self) -> None:
        # [0,1] at 10, [1,2] and [2,3] touch the hole, [3,4] at 30 -> (10 + 30) / 2 s
        v = [10, 10, None, 30, 30]
        assert m.time_weighted_mean(ts(0, 1, 2, 3, 4), v, 0, 4 * S) == 20

    def test_nan_is_a_hole(self) -> None:
        v = [10, 10, math.nan, 30, 30]
        assert m.time_weighted_mean(ts(0, 1, 2, 3, 4), v, 0, 4 * S) == 20

    def test_single_sample(self) -> None:
        assert m.time_weighted_mean(ts(5), [7.0], 0, 10 * S) == 7.0

    def test_sample_isolated_by_holes(self) -> None:
        assert m.time_weighted_mean(ts(0, 5, 10), [None, 7.0, None], 0, 10 * S) == 7.0

    def test_zero_length_window_on_a_sample(self) -> None:
        assert m.time_weighted_mean(ts(0, 10), [1.0, 2.0], 10 * S, 10 * S) == 2.0

    def test_nothing_in_window(self) -> None:
        assert m.time_weighted_mean(ts(0, 10), [1, 2], 20 * S, 30 * S) is None
        assert m.time_weighted_mean([], [], 0, S) is None
        assert m.time_weighted_mean(ts(0, 1), [None, None], 0, S) is None

    def test_window_between_two_samples_interpolates(self) -> None:
        assert m.time_weighted_mean(ts(0, 10), [0, 10], 4 * S, 6 * S) == pytest.approx(5.0)

    def test_max_gap(self) -> None:
        t, v = ts(0, 1, 100, 103), [1, 1, 5, 5]
        # without a limit: 1 + (1+5)/2*99 + 5*3 = 313 over 103 s
        assert m.time_weighted_mean(t, v, 0, 103 * S) == pytest.approx(313 / 103)
        # the 99 s interval is a hole: (1*1 + 5*3) / 4 s
        assert m.time_weighted_mean(t, v, 0, 103 * S, max_gap_ns=10 * S) == pytest.approx(4.0)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError):
            m.time_weighted_mean(ts(0, 2, 1), [1, 2, 3], 0, 3 * S)
        with pytest.raises(ValueError):
            m.time_weighted_mean(ts(0, 1), [1], 0, S)
        with pytest.raises(ValueError):
            m.time_weighted_mean(ts(0, 1), [1, 2], S, 0)

    def test_fast_for_100k_samples(self) -> None:
        n = 100_000
        t = [i * 100_000_000 for i in range(n)]
        v = [float(i % 100) for i in range(n)]
        start = time.perf_counter()
        out = m.time_weighted_mean(t, v, 0, t[-1])
        assert time.perf_counter() - start < 1.0
        assert out == pytest.approx(49.5, rel=0.01)


def test_energy_integral_and_aec() -> None:
    assert m.energy_integral_j(ts(0, 1, 2), [100, 100, 100], 0, 2 * S) == pytest.approx(200)
    # ramp 100 -> 300 W over 2 s: 400 J
    assert m.energy_integral_j(ts(0, 2), [100, 300], 0, 2 * S) == pytest.approx(400)
    # a hole: covered part at 100 W, filled at the mean over 3 s
    assert m.energy_integral_j(ts(0, 1, 2, 3), [100, 100, None, 300], 0, 3 * S) == \
        pytest.approx(300)
    assert m.energy_integral_j(ts(0, 1), [None, None], 0, S) is None
    assert m.aec_w(300.0, 0, 3 * S) == 100.0
    assert m.aec_w(None, 0, S) is None
    assert m.aec_w(1.0, S, S) is None


def gpu(t_s: float, **kw: float | int | None) -> Sample:
    return Sample(t_ns=int(t_s * S), host="h", device="gpu0", source=kw.pop("source", "nvml"),
                  **kw)  # type: ignore[arg-type]


def cpu(t_s: float, **kw: float | int | None) -> Sample:
    return Sample(t_ns=int(t_s * S), host="h", device="cpu", source="psutil",
                  **kw)  # type: ignore[arg-type]


class TestAmuPcu:
    def test_amu_gpu(self) -> None:
        gib = 2**30
        samples = [gpu(1, mem_used_bytes=2 * gib, mem_total_bytes=8 * gib),
                   gpu(0, mem_used_bytes=2 * gib, mem_total_bytes=8 * gib),
                   gpu(2, mem_used_bytes=6 * gib, mem_total_bytes=8 * gib)]
        frac, g = m.amu(samples, 0, 2 * S)
        # [0,1] at 2 GiB, [1,2] 2 -> 6 GiB: mean (2 + 4) / 2 = 3 GiB = 0.375
        assert g == pytest.approx(3.0)
        assert frac == pytest.approx(0.375)

    def test_amu_cpu_uses_rss(self) -> None:
        gib = 2**30
        samples = [cpu(0, rss_bytes=gib, mem_used_bytes=3 * gib, mem_total_bytes=4 * gib),
                   cpu(1, rss_bytes=gib, mem_used_bytes=3 * gib, mem_total_bytes=4 * gib)]
        assert m.amu(samples, 0, S) == (pytest.approx(0.25), pytest.approx(1.0))

    def test_amu_unknown(self) -> None:
        assert m.amu([], 0, S) == (None, None)
        assert m.amu([cpu(0, mem_total_bytes=4), cpu(1, mem_total_bytes=4)], 0, S) == (None, None)

    def test_mixed_devices_rejected(self) -> None:
        with pytest.raises(ValueError):
            m.amu([gpu(0), cpu(0)], 0, S)

    def test_pcu_prefers_gpm(self) -> None:
        samples = [gpu(0, sm_active_pct=40.0, util_pct=100.0, source="gpm"),
                   gpu(1, sm_active_pct=60.0, util_pct=100.0, source="gpm")]
        assert m.pcu(samples, 0, S) == (pytest.approx(0.5), "gpm")

    def test_pcu_falls_back_to_util(self) -> None:
        samples = [gpu(0, util_pct=100.0), gpu(1, util_pct=50.0)]
        assert m.pcu(samples, 0, S) == (pytest.approx(0.75), "nvml")

    def test_pcu_simulated_is_labelled(self) -> None:
        samples = [gpu(0, util_pct=100.0, source="simulated"), gpu(1, util_pct=100.0)]
        assert m.pcu(samples, 0, S) == (pytest.approx(1.0), "simulated")

    def test_pcu_cpu(self) -> None:
        samples = [cpu(0, cpu_pct=100.0), cpu(1, cpu_pct=100.0)]
        assert m.pcu(samples, 0, S, n_cpus=4) == (pytest.approx(0.25), "psutil")
        with pytest.raises(ValueError):
            m.pcu(samples, 0, S)

    def test_pcu_unknown(self) -> None:
        assert m.pcu([gpu(0), gpu(1)], 0, S) == (None, None)


class TestLatency:
    def test_hand_computed(self) -> None:
        stats = m.latency_stats([4.0, 1.0, 3.0, 2.0])
        assert stats["mean"] == 2.5
        assert stats["p50"] == 2.5
        assert stats["p90"] == pytest.approx(3.7)  # h = 2.7
        assert stats["p99"] == pytest.approx(3.97)  # h = 2.97

    def test_matches_type_7(self) -> None:
        xs = [0.013, 0.5, 0.021, 0.3, 0.017, 0.9, 0.011, 0.2, 0.05]
        q = statistics.quantiles(xs, n=100, method="inclusive")
        stats = m.latency_stats(xs)
        assert stats["p50"] == pytest.approx(q[49])
        assert stats["p90"] == pytest.approx(q[89])
        assert stats["p99"] == pytest.approx(q[98])

    def test_edges(self) -> None:
        assert m.latency_stats([]) == {"mean": None, "p50": None, "p90": None, "p99": None}
        assert m.latency_stats([None, 2.0])["p99"] == 2.0
        assert m.percentile([1.0, 2.0], 100) == 2.0
        assert m.percentile([1.0, 2.0], 0) == 1.0
        with pytest.raises(ValueError):
            m.percentile([1.0], 101)


def test_throughputs() -> None:
    assert m.it_tokens_per_s(320, 2.0) == 160
    assert m.it_tokens_per_s(320, 0) is None
    assert m.tpot_s(1.0, 0.1, 10) == pytest.approx(0.1)
    assert m.tpot_s(1.0, 0.1, 1) is None
    assert m.tt(1000, 1e6, 2.0) == pytest.approx(5e-4)
    assert m.tt(1000, 0, 2.0) is None
    assert m.st(8, 1e6, 4.0) == pytest.approx(2e-6)
    assert m.j_per_token(100.0, 50) == 2.0
    assert m.j_per_token(None, 50) is None
    assert m.mfu(2e14, 8e14) == 0.25


def test_mcr_and_quality() -> None:
    q_orig, q_comp = m.quality_from_perplexity(10.0), m.quality_from_perplexity(12.0)
    assert m.mcr(4e9, 1e9, q_orig, q_comp) == pytest.approx(4 * 10 / 12)
    assert m.mcr(4e9, 0, q_orig, q_comp) is None
    assert m.mcr(4e9, 1e9, None, q_comp) is None


def test_flops_per_token() -> None:
    assert m.flops_per_token(1e9, training=True) == 6e9
    assert m.flops_per_token(1e9, training=False) == 2e9
    assert m.flops_per_token(0, training=True, n_layers=2, d_attn=4, context_len=8) == 12 * 64


class TestLeaderboard:
    def test_minmax(self) -> None:
        assert m.minmax_scores([1, 2, 3], True) == pytest.approx([0.1, 0.55, 1.0])
        assert m.minmax_scores([1, 2, 3], False) == pytest.approx([1.0, 0.55, 0.1])

    def test_minmax_equal_and_none(self) -> None:
        assert m.minmax_scores([5, 5], False) == [1.0, 1.0]
        assert m.minmax_scores([None, 1, 3], True) == [None, pytest.approx(0.1), 1.0]
        assert m.minmax_scores([None], True) == [None]
        assert m.minmax_scores([], True) == []

    def test_ranks(self) -> None:
        assert m.ranks([1.0, 0.55, 0.55, 0.1, None]) == [1, 2, 2, 4, None]
        assert m.ranks([0.1, 1.0]) == [2, 1]
        assert m.ranks([]) == []
