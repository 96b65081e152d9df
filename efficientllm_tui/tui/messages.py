"""Messages workers post to the app: small dataclasses named for what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Any

from textual.message import Message

from efficientllm_tui.runs.queue import QueueRow
from efficientllm_tui.runs.tracker import WatchUpdate
from profiling.sample import Sample

_seq = count()


@dataclass
class SamplesArrived(Message):
    """A batch of live samples from the feed.

    High rate: when the UI is behind, a newer SamplesArrived replaces a queued older one and
    takes its samples along (oldest first), so a slow redraw drops frames, never data.
    """

    samples: list[Sample]
    seq: int = field(default_factory=lambda: next(_seq))

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, SamplesArrived):
            return False
        older, newer = (self, message) if self.seq < message.seq else (message, self)
        merged = older.samples + newer.samples
        self.samples = message.samples = merged
        self.seq = message.seq = newer.seq
        return True


@dataclass
class FeedChanged(Message):
    """The live feed connected, or lost its source (detail says why)."""

    connected: bool
    detail: str


@dataclass
class RunsWatched(Message):
    """The run-dir watcher found new runs, new events, or runs that ended."""

    update: WatchUpdate


@dataclass
class QueueChanged(Message):
    """The queue on disk changed: running and waiting runs per device, in start order."""

    rows: list[QueueRow]


@dataclass
class RunIngested(Message):
    """The dispatcher stored a finished run in the database."""

    run_id: str
    status: str
    error: str | None = None


@dataclass
class RecentRunsLoaded(Message):
    """The newest stored runs, for the dashboard panel."""

    rows: list[dict[str, Any]]


@dataclass
class StoreChanged(Message):
    """Runs were added or deleted: screens showing stored runs reload."""
