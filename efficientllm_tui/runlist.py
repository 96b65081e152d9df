"""The run history query behind the Runs screen: filters typed by a user, one page at a time.

Every filter (exact family, model, technique and status, free-text words, dates) is a
parameter of `Store.list_runs`, which reads the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from efficientllm_tui.errors import BadInput

if TYPE_CHECKING:
    from efficientllm_tui.store.db import Store

_KEYS = {
    "m": "model",
    "model": "model",
    "t": "technique",
    "tech": "technique",
    "technique": "technique",
    "f": "family",
    "family": "family",
    "s": "status",
    "status": "status",
    "since": "since",
    "date": "date",
    "on": "date",
}


@dataclass
class RunFilter:
    """What to show: exact matches (lists mean any of), words, a start date."""

    family: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    technique: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    """Each must appear (case-insensitive) in the run id, model, technique, host or error
    text."""
    since: date | None = None
    """Runs started on or after this day (UTC)."""
    on: date | None = None
    """Runs started on this day (UTC)."""

    @classmethod
    def parse(cls, text: str, *, family: str | None = None, status: str | None = None) -> RunFilter:
        """`model:tiny t:fp32,bf16 since:2026-11-01 oom` -> a filter; BadInput when malformed."""
        out = cls()
        for token in text.split():
            key, sep, value = token.partition(":")
            if not sep or key.lower() not in _KEYS:
                out.words.append(token.lower())
                continue
            name = _KEYS[key.lower()]
            if not value:
                raise BadInput(f"filter {token!r} needs a value after ':'")
            if name in ("since", "date"):
                try:
                    day = date.fromisoformat(value)
                except ValueError:
                    raise BadInput(f"filter {token!r}: expected a date like 2026-11-27") from None
                if name == "since":
                    out.since = day
                else:
                    out.on = day
            else:
                getattr(out, name).extend(v for v in value.split(",") if v)
        if family:
            out.family = [family]
        if status:
            out.status = [status]
        return out


def fetch_runs(
    store: Store,
    flt: RunFilter,
    *,
    order_by: str = "started_at",
    descending: bool = True,
    limit: int = 200,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """One page of runs rows with the list metrics, filtered and ordered."""
    return store.list_runs(
        family=flt.family or None,
        model=flt.model or None,
        technique=flt.technique or None,
        status=flt.status or None,
        words=flt.words,
        since=flt.since,
        on=flt.on,
        limit=limit,
        offset=offset,
        order_by=order_by,
        descending=descending,
    )


def describe(flt: RunFilter) -> str:
    """The filter in words, for the status line."""
    parts = [
        f"{k}={','.join(v)}"
        for k in ("family", "model", "technique", "status")
        if (v := getattr(flt, k))
    ]
    parts += [f'"{w}"' for w in flt.words]
    if flt.since:
        parts.append(f"since {flt.since}")
    if flt.on:
        parts.append(f"on {flt.on}")
    return " ".join(parts) or "all runs"
