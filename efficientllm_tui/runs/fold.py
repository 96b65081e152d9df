"""How a run ended, read from its events: the one rule every reader of events uses (ingest,
the dashboard's live runs, the CLI's progress), so a run never reads `failed` in one place and
`cancelled` in another."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runners.protocol import Event


@dataclass(frozen=True, slots=True)
class Ending:
    """A run's ending as its runner reported it."""

    status: str
    """`ok`, `failed`, `oom` or `cancelled`."""
    error_type: str | None
    """`oom`, `unsupported`, `bad_input` or `crash`; None when ok."""
    error_text: str | None
    """The reason, one line; None when ok."""


def ending(events: Iterable[Event]) -> Ending | None:
    """The run's ending: its last `result` event (an OOM reports `error` then `result`), else
    its first `error` event (the runner died right after it, or never started); None while
    neither came. A runner stopped by a signal reports the message `cancelled`."""
    result: Event | None = None
    error: Event | None = None
    for ev in events:
        if ev.kind == "result":
            result = ev
        elif ev.kind == "error" and error is None:
            error = ev
    error_type = error.get("type") if error is not None else None
    error_text = error.get("message") if error is not None else None
    if result is not None:
        status = str(result.get("status") or "failed")
        error_type = result.get("error_type") or error_type
        error_text = result.get("error_message") or error_text
    elif error is not None:
        status = "oom" if error_type == "oom" else "failed"
    else:
        return None
    if error_text == "cancelled" and status in ("failed", "ok"):
        status = "cancelled"
    if status == "ok":
        return Ending("ok", None, None)
    return Ending(status, str(error_type) if error_type else None,
                  str(error_text) if error_text else None)


COUNTED_PHASES = ("warmup", "measure")
"""The phases whose steps make a run's progress (warm-up + measured iterations); prefill
replays, evaluation and quality steps come after and are not counted."""


def steps_done(count: int, ev: Event, *, warmup: int, total: int) -> int:
    """The progress count after one event, never past `total`: a measured step adds one, a
    measure phase that restarts (a compile fallback) counts from where it restarted, every
    other event leaves it as it was. One rule for the CLI's progress lines, `queue` and the
    dashboard."""
    if ev.kind == "step" and ev.get("phase") in COUNTED_PHASES:
        return min(count + 1, total) if total > 0 else count + 1
    if ev.kind == "phase" and ev.get("name") == "measure" and ev.get("restarted_at") is not None:
        return min(warmup + int(ev.get("restarted_at") or 0), total) if total > 0 else count
    return count


ONE_TIME_PHASES = {
    "convert": ("converting the GGUF weights to a transformers model",
                "about 45 s for smollm2-135m on 2 CPU cores, longer for larger models", "~1 min"),
    "build_kernels": ("building the quantization backend's CUDA kernels",
                      "a few minutes of CUDA compilation", "minutes"),
    "compile_kernels": ("building optimum-quanto's CUDA extension",
                        "a few minutes of CUDA compilation", "minutes"),
}
"""Phases a runner goes through once per machine (what they make is cached): what each does,
roughly how long it takes, and that in a word for narrow places."""


def one_time_note(phase: str | None) -> str | None:
    """`one-time step: converting ... (about 45 s ...; cached for later runs)` for a phase
    that runs once per machine; None for the others."""
    if phase not in ONE_TIME_PHASES:
        return None
    what, how_long, _ = ONE_TIME_PHASES[phase]
    return f"one-time step: {what} ({how_long}; cached for later runs)"


def rank_cause(ending_: Ending, rank_events: Iterable[tuple[int, Iterable[Event]]]
               ) -> Ending:
    """A multi-rank run's ending with the failure that ended it: when one rank fails, the
    launcher stops the others (rank 0 among them) with a signal, so rank 0 reports
    `cancelled`; the first other rank that reported an error of its own (not `cancelled`)
    names the cause, as `rank N: ...`. A run the user stopped keeps `cancelled`."""
    if ending_.status != "cancelled":
        return ending_
    for rank, events in sorted(rank_events, key=lambda r: r[0]):
        own = ending(events)
        if own is not None and own.status not in ("ok", "cancelled"):
            return Ending(own.status, own.error_type, f"rank {rank}: {own.error_text}")
    return ending_
