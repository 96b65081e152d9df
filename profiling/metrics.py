"""The metric math of DESIGN.md section 6 (EfficientLLM, arXiv 2505.13840), as pure functions.

Why a module of its own: the same numbers are computed live in the TUI, at ingest and in
tests, and must agree to the last digit. Every function is pure (no I/O, no clock), takes
plain sequences, returns None for "cannot be measured" (never a fake 0), and is linear in
its input, so 100k samples cost milliseconds.

Time series are sampled at irregular instants (a tick can be late; a daemon can pause), so
means over a window are time-weighted: the trapezoid rule over the piecewise-linear curve
through the samples, clipped to the window. The paper averaged `nvidia-smi` readings taken
once a second with equal weights; with regular samples the two agree.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from profiling.sample import Sample

GIB = 1024**3


def _clean(v: float | None) -> float | None:
    return None if v is None or v != v else v  # NaN is missing too


def _integrate(t_ns: Sequence[int], values: Sequence[float | None], t0_ns: int, t1_ns: int,
               max_gap_ns: int | None) -> tuple[float, int, float, int]:
    """(integral in value x ns, covered ns, sum of point values in window, their count)."""
    if len(t_ns) != len(values):
        raise ValueError(f"{len(t_ns)} times but {len(values)} values")
    if t1_ns < t0_ns:
        raise ValueError(f"window ends before it starts ({t0_ns} > {t1_ns})")
    if any(a > b for a, b in zip(t_ns, t_ns[1:], strict=False)):
        raise ValueError("sample times must be sorted ascending")
    n = len(t_ns)
    if n == 0:
        return 0.0, 0, 0.0, 0
    lo = max(0, bisect_left(t_ns, t0_ns) - 1)   # the last sample before the window
    hi = min(n - 1, bisect_right(t_ns, t1_ns))  # the first sample after it
    integral = 0.0
    covered = 0
    point_sum = 0.0
    points = 0
    ti = t_ns[lo]
    vi = _clean(values[lo])
    for j in range(lo, hi + 1):
        tj = t_ns[j]
        vj = _clean(values[j])
        if vj is not None and t0_ns <= tj <= t1_ns:
            point_sum += vj
            points += 1
        if j > lo and vi is not None and vj is not None and tj > ti \
                and (max_gap_ns is None or tj - ti <= max_gap_ns):
            a = ti if ti > t0_ns else t0_ns
            b = tj if tj < t1_ns else t1_ns
            if b > a:
                slope = (vj - vi) / (tj - ti)
                va = vi + slope * (a - ti)
                vb = vi + slope * (b - ti)
                integral += (va + vb) * (b - a) / 2.0
                covered += b - a
        ti, vi = tj, vj
    return integral, covered, point_sum, points


def time_weighted_mean(t_ns: Sequence[int], values: Sequence[float | None], t0_ns: int,
                       t1_ns: int, max_gap_ns: int | None = None) -> float | None:
    """Time-weighted mean of a sampled signal over the window [t0_ns, t1_ns].

    Definition (DESIGN.md section 6, "time-weighted mean over the window"): the integral of
    the piecewise-linear curve through the samples, divided by the time it covers.
    - Times must be sorted; spacing may be irregular.
    - An interval that crosses an edge is clipped there, its value at the edge linearly
      interpolated, so the samples just outside the window count for the part inside.
    - A None (or NaN) value is a hole: both intervals touching it are left out, never
      interpolated across. So is any interval longer than `max_gap_ns`, when given.
    - Time not covered by any interval (before the first sample, after the last, holes)
      is left out of the denominator: the mean is over what was observed.
    - With no interval overlapping the window (one sample; samples isolated by holes; a
      zero-length window), the plain mean of the sample values inside it; with no sample
      inside it either, None.
    """
    integral, covered, point_sum, points = _integrate(t_ns, values, t0_ns, t1_ns, max_gap_ns)
    if covered > 0:
        return integral / covered
    if points:
        return point_sum / points
    return None


def sample_gap_ns(t_ns: Sequence[int], floor_ns: int = 1_000_000_000,
                  intervals: float = 5.0) -> int:
    """The longest spacing of a series that still counts as continuous sampling: `intervals`
    x the median spacing, at least `floor_ns` (1 s). Longer spacings are holes (a daemon
    killed, stopped or starved), never bridged by interpolation."""
    steps = sorted(b - a for a, b in zip(t_ns, t_ns[1:], strict=False) if b > a)
    if not steps:
        return floor_ns
    return max(floor_ns, int(intervals * steps[len(steps) // 2]))


def coverage(t_ns: Sequence[int], t0_ns: int, t1_ns: int, max_gap_ns: int
             ) -> tuple[float | None, int]:
    """(fraction of the window covered by samples, longest uncovered stretch in ns).

    Time counts as covered between two consecutive samples at most `max_gap_ns` apart,
    clipped to the window (the same intervals `time_weighted_mean` integrates over when
    given that `max_gap_ns`). The edges count: a window that starts before the first
    sample is uncovered until it. None for an empty window.
    """
    span = t1_ns - t0_ns
    if span <= 0:
        return None, 0
    ones = [1.0] * len(t_ns)
    _, covered, _, _ = _integrate(t_ns, ones, t0_ns, t1_ns, max_gap_ns)
    # The longest hole: between covered stretches, and at the window's edges.
    gap = 0
    edge = t0_ns
    for a, b in zip(t_ns, t_ns[1:], strict=False):
        if b - a <= max_gap_ns:
            lo, hi = max(a, t0_ns), min(b, t1_ns)
            if hi > lo:
                gap = max(gap, lo - edge)
                edge = max(edge, hi)
    gap = max(gap, t1_ns - edge)
    return covered / span, gap


def energy_integral_j(t_ns: Sequence[int], power_w: Sequence[float | None], t0_ns: int,
                      t1_ns: int, max_gap_ns: int | None = None) -> float | None:
    """Energy in joules from sampled power: the AEC cross-check `energy_integral_j`.

    Definition (DESIGN.md section 6, AEC row): the trapezoid integral of power over the
    window. Where samples do not cover the whole window (holes, edges), the uncovered time
    is filled at the window's time-weighted mean power, i.e. the result is
    `time_weighted_mean(power) x window seconds`; with full coverage the two are identical.
    """
    mean = time_weighted_mean(t_ns, power_w, t0_ns, t1_ns, max_gap_ns)
    if mean is None:
        return None
    return mean * (t1_ns - t0_ns) / 1e9


def aec_w(energy_j: float | None, t0_ns: int, t1_ns: int) -> float | None:
    """AEC, average energy consumption in watts: energy over the window / window seconds.

    Definition (DESIGN.md section 6; paper section 3, AEC): the energy-counter delta over the
    measured window divided by its duration. None without energy or for an empty window.
    """
    seconds = (t1_ns - t0_ns) / 1e9
    if energy_j is None or seconds <= 0:
        return None
    return energy_j / seconds


def _one_device(samples: Sequence[Sample]) -> list[Sample]:
    devices = {s.device for s in samples}
    if len(devices) > 1:
        raise ValueError(f"samples of several devices: {sorted(devices)}; filter by device")
    return sorted(samples, key=lambda s: s.t_ns)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def amu(samples: Sequence[Sample], t0_ns: int, t1_ns: int,
        max_gap_ns: int | None = None) -> tuple[float | None, float | None]:
    """AMU of one device over the window: (fraction, GiB).

    Definition (DESIGN.md section 6, AMU; paper: Average Memory Utilization): the
    time-weighted mean of mem_used / mem_total over the window (NVML device memory), and
    `amu_gib`, the time-weighted mean of mem_used in GiB (2**30 bytes), the form the
    paper's tables print. For the host device 'cpu' the memory is that of the runner
    process trees: rss_bytes / mem_total_bytes (host total), and rss_bytes in GiB
    (DESIGN.md section 6, "On CPU-only machines").
    """
    ordered = _one_device(samples)
    if not ordered:
        return None, None
    t = [s.t_ns for s in ordered]
    cpu = ordered[0].device == "cpu"
    used = [s.rss_bytes if cpu else s.mem_used_bytes for s in ordered]
    frac = [_ratio(u, s.mem_total_bytes) for u, s in zip(used, ordered, strict=True)]
    gib = [u / GIB if u is not None else None for u in used]
    return (time_weighted_mean(t, frac, t0_ns, t1_ns, max_gap_ns),
            time_weighted_mean(t, gib, t0_ns, t1_ns, max_gap_ns))


def pcu(samples: Sequence[Sample], t0_ns: int, t1_ns: int, n_cpus: int | None = None,
        max_gap_ns: int | None = None) -> tuple[float | None, str | None]:
    """PCU of one device over the window: (fraction, pcu_source).

    Definition (DESIGN.md section 6, PCU): the time-weighted mean of SM activity / 100.
    The SM activity is GPM SM_UTIL (`sm_active_pct`) when any sample has it (source
    'gpm'), else NVML utilization.gpu (`util_pct`: "a kernel was running", coarse; source
    'nvml'). For the host device 'cpu': the runner trees' CPU %, summed over cores, over
    100 x n_cpus (source 'psutil'). Any simulated sample makes the source 'simulated'.
    """
    ordered = _one_device(samples)
    if not ordered:
        return None, None
    t = [s.t_ns for s in ordered]
    simulated = any(s.simulated for s in ordered)
    if ordered[0].device == "cpu":
        if not n_cpus or n_cpus < 1:
            raise ValueError("n_cpus (a positive count) is needed for the PCU of 'cpu'")
        values = [s.cpu_pct / (100.0 * n_cpus) if s.cpu_pct is not None else None
                  for s in ordered]
        source = "psutil"
    elif any(s.sm_active_pct is not None for s in ordered):
        values = [s.sm_active_pct / 100.0 if s.sm_active_pct is not None else None
                  for s in ordered]
        source = "gpm"
    else:
        values = [s.util_pct / 100.0 if s.util_pct is not None else None for s in ordered]
        source = "nvml"
    mean = time_weighted_mean(t, values, t0_ns, t1_ns, max_gap_ns)
    if mean is None:
        return None, None
    return mean, "simulated" if simulated else source


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted values, linearly interpolated.

    Definition: Hyndman & Fan type 7, the default of NumPy (`method='linear'`) and of
    R's quantile(): rank h = (n - 1) q / 100, value x[floor h] + (h - floor h)
    (x[floor h + 1] - x[floor h]).
    """
    n = len(sorted_values)
    if n == 0:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    h = (n - 1) * q / 100.0
    k = math.floor(h)
    if k + 1 >= n:
        return float(sorted_values[-1])
    lo = sorted_values[k]
    return lo + (h - k) * (sorted_values[k + 1] - lo)


def latency_stats(latencies_s: Sequence[float | None]) -> dict[str, float | None]:
    """AL and its spread: mean, p50, p90, p99 of per-iteration latencies in seconds.

    Definition (DESIGN.md section 6, AL): mean latency of one measured iteration (training
    step, or one inference request), CUDA-synchronised by the runner; percentiles are
    linear-interpolated (type 7, see `percentile`). None values are skipped; with none
    left every entry is None.
    """
    xs = sorted(x for x in latencies_s if x is not None and x == x)
    if not xs:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"mean": math.fsum(xs) / len(xs), "p50": percentile(xs, 50),
            "p90": percentile(xs, 90), "p99": percentile(xs, 99)}


def _per(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def it_tokens_per_s(tokens: float | None, seconds: float | None) -> float | None:
    """IT, inference throughput: generated tokens / s (DESIGN.md section 6, IT)."""
    return _per(tokens, seconds)


def tpot_s(latency_s: float | None, ttft_s: float | None, new_tokens: int | None) -> float | None:
    """TPOT, time per output token after the first: (latency - TTFT) / (new_tokens - 1).

    Definition (DESIGN.md section 6, IT row). None for new_tokens <= 1 (no second token).
    """
    if latency_s is None or ttft_s is None or new_tokens is None or new_tokens <= 1:
        return None
    return (latency_s - ttft_s) / (new_tokens - 1)


def tt(tokens: float | None, params: float | None, seconds: float | None) -> float | None:
    """TT, pretraining throughput: tokens / (total params x s), in tokens/param/s.

    Definition (DESIGN.md section 6, TT; paper: throughput normalised by model size).
    """
    if params is None or seconds is None:
        return None
    return _per(tokens, params * seconds if params > 0 and seconds > 0 else None)


def st(samples: float | None, params: float | None, seconds: float | None) -> float | None:
    """ST, fine-tuning throughput: samples / (total params x s), in samples/param/s.

    Definition (DESIGN.md section 6, ST).
    """
    return tt(samples, params, seconds)


def quality_from_perplexity(ppl: float | None) -> float | None:
    """Quality for MCR: 1 / perplexity on the eval text (DESIGN.md section 6, MCR row)."""
    return _per(1.0, ppl)


def mcr(orig_bytes: float | None, comp_bytes: float | None, quality_orig: float | None,
        quality_comp: float | None) -> float | None:
    """MCR: (original bytes / compressed bytes) x (quality_compressed / quality_original).

    Definition (DESIGN.md section 6, MCR; paper: Model Compression Rate, compression
    weighted by retained quality). Quality is 1/perplexity unless a task score is given.
    """
    size_ratio = _per(orig_bytes, comp_bytes)
    quality_ratio = _per(quality_comp, quality_orig)
    if size_ratio is None or quality_ratio is None:
        return None
    return size_ratio * quality_ratio


def j_per_token(energy_j: float | None, tokens: float | None) -> float | None:
    """Energy per processed token in joules (DESIGN.md section 6, extras)."""
    return _per(energy_j, tokens)


def flops_per_token(n_params: float, *, training: bool, n_layers: int = 0, d_attn: int = 0,
                    context_len: float = 0) -> float:
    """Model FLOPs per token: 6N (+ 12 L d T) trained, 2N (+ 4 L d T) inferred.

    Definition (DESIGN.md section 6, mfu; Kaplan et al. 2020 for 6N/2N, and the attention
    term of PaLM, Chowdhery et al. 2022, appendix B): L layers, d = heads x head dim,
    T = context length attended over (for decode, the mean context length).
    """
    attn = n_layers * d_attn * context_len
    return 6.0 * n_params + 12.0 * attn if training else 2.0 * n_params + 4.0 * attn


def inference_flops_per_sequence(n_params: float, prompt_tokens: int, new_tokens: int, *,
                                 n_layers: int = 0, d_attn: int = 0) -> float:
    """Model FLOPs of one request sequence: a prefill of P tokens, then G - 1 decode steps.

    Definition (DESIGN.md section 6, mfu, inferred tokens: 2N + 4 L d T each): the first
    generated token comes from the prefill's last logits, so P + G - 1 tokens go through
    the model, and the token at position t attends over t positions (causal), so the
    attention term sums T over t = 1 .. P + G - 1.
    """
    forwarded = max(0, prompt_tokens + new_tokens - 1)
    context_sum = forwarded * (forwarded + 1) / 2.0
    return 2.0 * n_params * forwarded + 4.0 * n_layers * d_attn * context_sum


def mfu(flops_per_s: float | None, peak_flops_per_s: float | None) -> float | None:
    """MFU: achieved model FLOPs/s over the measured dense bf16 peak (DESIGN.md section 6)."""
    return _per(flops_per_s, peak_flops_per_s)


def minmax_scores(values: Sequence[float | None], higher_is_better: bool) -> list[float | None]:
    """Leaderboard scores in [0.1, 1]: min-max normalised, lower-is-better flipped.

    Definition (DESIGN.md section 5, `leaderboard`, as the paper ranks its tables):
    s = 0.1 + 0.9 (v - min) / (max - min), or 0.1 + 0.9 (max - v) / (max - min) when lower
    is better, so the best value scores 1 and the worst 0.1. All values equal: 1.0 each.
    None (and NaN) stays None and takes no part in min and max.
    """
    clean = [_clean(v) for v in values]
    present = [v for v in clean if v is not None]
    if not present:
        return [None] * len(clean)
    lo, hi = min(present), max(present)
    if hi == lo:
        return [1.0 if v is not None else None for v in clean]
    span = hi - lo
    out: list[float | None] = []
    for v in clean:
        if v is None:
            out.append(None)
        else:
            frac = (v - lo) / span if higher_is_better else (hi - v) / span
            out.append(0.1 + 0.9 * frac)
    return out


def ranks(scores: Sequence[float | None]) -> list[int | None]:
    """Ranks of scores, 1 = highest; ties share the smallest rank (1, 2, 2, 4); None -> None.

    Definition (DESIGN.md section 5: rank 1 = best, as the paper's tables).
    """
    present = sorted((s for s in scores if s is not None and s == s), reverse=True)
    first: dict[float, int] = {}
    for i, s in enumerate(present):
        first.setdefault(s, i + 1)
    return [first[s] if s is not None and s == s else None for s in scores]
