"""The one rule for how a run ended, from its events (ingest, the dashboard, the CLI)."""

from __future__ import annotations

from efficientllm_tui.runs.fold import Ending, ending
from runners.protocol import Event


def ev(kind: str, **fields: object) -> Event:
    return Event(1, kind, dict(fields))


def test_endings() -> None:
    assert ending([ev("started"), ev("step")]) is None
    assert ending([ev("result", status="ok")]) == Ending("ok", None, None)
    oom = [ev("error", type="oom", message="CUDA out of memory"),
           ev("result", status="oom", error_type="oom", error_message="CUDA out of memory")]
    assert ending(oom) == Ending("oom", "oom", "CUDA out of memory")
    assert ending([ev("error", type="crash", message="boom")]) == Ending("failed", "crash",
                                                                         "boom")
    assert ending([ev("error", type="crash", message="cancelled")]) == Ending(
        "cancelled", "crash", "cancelled")
    assert ending([ev("error", type="bad_input", message="not started: x")]) == Ending(
        "failed", "bad_input", "not started: x")
    # the first error and the last result count
    assert ending([ev("error", type="unsupported", message="a"),
                   ev("error", type="crash", message="b")]).error_text == "a"  # type: ignore[union-attr]


def test_a_failing_rank_names_the_ending_of_a_multi_rank_run() -> None:
    from efficientllm_tui.runs.fold import rank_cause

    cancelled = ending([ev("started"), ev("error", type="crash", message="cancelled")])
    assert cancelled is not None
    crash = [ev("started"), ev("error", type="crash", message="CUDA error: illegal address")]
    oom = [ev("error", type="oom", message="CUDA out of memory")]
    stopped = [ev("error", type="crash", message="cancelled")]
    assert rank_cause(cancelled, [(3, oom), (1, crash)]) == Ending(
        "failed", "crash", "rank 1: CUDA error: illegal address")  # the lowest rank first
    assert rank_cause(cancelled, [(2, oom)]) == Ending("oom", "oom", "rank 2: CUDA out of memory")
    # every rank stopped (the user's stop), or no rank said anything: cancelled it stays
    assert rank_cause(cancelled, [(1, stopped), (2, [ev("started")])]) == cancelled
    # rank 0's own ending is never replaced
    own = Ending("failed", "crash", "boom")
    assert rank_cause(own, [(1, crash)]) == own
