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
