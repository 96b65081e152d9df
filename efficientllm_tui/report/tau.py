"""Kendall tau between our ranks and the paper's, with a note instead of a number where it
means nothing (fewer than 3 pairs, or every rank tied on one side)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from efficientllm_tui.report.record import Tau

MIN_PAIRS = 3
"""Fewer pairs than this give no tau: with two, tau is +-1 and its p-value is 1."""


def kendall(metric: str, ours: Sequence[int], paper: Sequence[int]) -> Tau:
    """Tau-b of the paired ranks (scipy.stats.kendalltau) and its two-sided p-value.

    Args:
        metric: What the pairs rank (`al_s`, or `all` for pooled metrics).
        ours: Our ranks.
        paper: The paper's ranks of the same rows, in the same order.
    """
    n = len(ours)
    if n < MIN_PAIRS:
        return Tau(metric, n, None, None, f"n = {n} < {MIN_PAIRS}: too few rows the paper ranks")
    if len(set(ours)) == 1 or len(set(paper)) == 1:
        side = "our" if len(set(ours)) == 1 else "the paper's"
        return Tau(metric, n, None, None, f"all of {side} ranks are tied")
    from scipy.stats import kendalltau  # heavy: loaded only when a report is built

    result = kendalltau(list(ours), list(paper))
    tau, p = float(result.statistic), float(result.pvalue)
    if not math.isfinite(tau):
        return Tau(metric, n, None, None, "tau is undefined for these ranks")
    return Tau(metric, n, tau, p if math.isfinite(p) else None)
