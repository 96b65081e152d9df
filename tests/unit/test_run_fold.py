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
