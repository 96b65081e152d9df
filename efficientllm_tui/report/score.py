"""The paper's normalisation on a workload's medians: min-max scores in [0.1, 1] with
lower-is-better metrics flipped, and ranks (1 = best, ties share a rank), as the store's
leaderboard view computes them per run (store.schema.leaderboard_sql)."""

from __future__ import annotations

from collections.abc import Mapping


def minmax_scores(values: Mapping[str, float], higher_is_better: bool) -> dict[str, float]:
    """Each key's score in [0.1, 1]: 0.1 for the worst value, 1 for the best, 1 for all when
    every value is equal (nothing to tell apart)."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {k: 0.1 + 0.9 * ((v - lo) if higher_is_better else (hi - v)) / span
            for k, v in values.items()}


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """SQL `rank()` over scores, best first: 1 + how many keys score strictly higher."""
    return {k: 1 + sum(1 for o in scores.values() if o > s) for k, s in scores.items()}
