"""The run history query behind the Runs screen: filters typed by a user, one page at a time.

Exact filters (family, model, technique, status) go through `Store.list_runs`. Free text and
dates are not among its parameters, so those pages come from an equivalent read-only SQL
query through `Store.query` (same columns, same NULLS LAST ordering).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from .errors import BadInput

if TYPE_CHECKING:
    from .store import Store

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
    """Each must appear (case-insensitive) in the run id, model, technique or error text."""
    since: date | None = None
    """Runs started on or after this day (UTC)."""
    on: date | None = None
    """Runs started on this day (UTC)."""

    @property
    def exact_only(self) -> bool:
        return not self.words and self.since is None and self.on is None

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
    if flt.exact_only:
        return store.list_runs(
            family=flt.family or None,
            model=flt.model or None,
            technique=flt.technique or None,
            status=flt.status or None,
            limit=limit,
            offset=offset,
            order_by=order_by,
            descending=descending,
        )
    from .store import LIST_METRIC_COLUMNS, RUN_COLUMNS

    if order_by not in RUN_COLUMNS and order_by not in LIST_METRIC_COLUMNS:
        raise BadInput(f"cannot order runs by {order_by!r}")
    where: list[str] = []
    params: list[Any] = []
    for col in ("family", "model", "technique", "status"):
        values = getattr(flt, col)
        if values:
            where.append(f"list_contains(?, r.{col})")
            params.append(list(values))
    for word in flt.words:
        where.append(
            "contains(lower(concat_ws(' ', r.run_id, r.model, r.technique, "
            "coalesce(r.error_text, ''))), ?)"
        )
        params.append(word)
    if flt.since is not None:
        where.append("r.started_at >= CAST(? AS DATE)")
        params.append(flt.since.isoformat())
    if flt.on is not None:
        where.append("CAST(r.started_at AS DATE) = CAST(? AS DATE)")
        params.append(flt.on.isoformat())
    cond = "WHERE " + " AND ".join(where)
    direction = "DESC" if descending else "ASC"
    pivot = ", ".join(
        f"max(m.value) FILTER (WHERE m.name = '{n}') AS \"{n}\"" for n in LIST_METRIC_COLUMNS
    )
    metric_cols = ", ".join(f'p."{n}"' for n in LIST_METRIC_COLUMNS)
    if order_by in RUN_COLUMNS:
        order = f'"{order_by}" {direction} NULLS LAST, run_id {direction}'
        sql = f"""
WITH page AS (SELECT r.* FROM runs r {cond} ORDER BY {order} LIMIT ? OFFSET ?),
p AS (SELECT m.run_id, {pivot} FROM metrics m
      WHERE m.run_id IN (SELECT run_id FROM page) GROUP BY m.run_id)
SELECT page.*, {metric_cols} FROM page LEFT JOIN p ON p.run_id = page.run_id ORDER BY {order}"""
    else:
        order = f'p."{order_by}" {direction} NULLS LAST, r.run_id {direction}'
        sql = f"""
WITH p AS (SELECT m.run_id, {pivot} FROM metrics m GROUP BY m.run_id)
SELECT r.*, {metric_cols} FROM runs r LEFT JOIN p ON p.run_id = r.run_id {cond}
ORDER BY {order} LIMIT ? OFFSET ?"""
    params += [int(limit), int(offset)]
    if not store.path.exists():
        return []
    result = store.query(sql, params=params)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


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
