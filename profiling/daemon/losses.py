"""Samples the spool could not keep: loss records, written beside the segments, and their reader.

A sample is lost to the spool when the disk stays full (or unwritable) longer than the
in-memory backlog lasts, when the spool thread is stuck so long that the sampler stops
queueing for it, or when the daemon stops while its backlog still cannot be written. Such
a loss is never silent: the daemon counts it (status `spool.lost`, `spool.losses`), logs
one line when it begins and one when it ends, and appends a record to
`<home>/spool/losses.jsonl` (one JSON object a line) once the disk takes writes again:

    {"lines_lost": 49, "first_t_ns": 1764000000000000000, "last_t_ns": 1764000000980000000,
     "noticed_ns": 1764000002100000000, "daemon_pid": 4242,
     "reason": "spool unwritable (File too large) and its backlog of 26 samples full"}

`lines_lost` samples with first_t_ns <= t_ns <= last_t_ns (all devices together) are
missing from the segments; samples of that interval that are in the segments are real.
`spool_losses(home, t0_ns, t1_ns)` returns the records overlapping a window, so ingest can
say how many samples of a run's window were lost and why. A loss that cannot be written
before the daemon exits (the disk never came back) is logged as such in daemon.log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from profiling import home as home_mod

log = logging.getLogger("profiling.daemon.spool")

LOSSES_FILE = "losses.jsonl"
"""The loss records' file inside the spool dir (segments are `samples-*.jsonl`)."""
_RECENT = 50


@dataclass(frozen=True, slots=True)
class SpoolLoss:
    """Samples of one interval that never reached the spool."""

    lines_lost: int
    """How many samples (lines, all devices together) are missing."""
    first_t_ns: int
    """t_ns of the earliest lost sample."""
    last_t_ns: int
    """t_ns of the latest lost sample."""
    noticed_ns: int
    """Wall clock when the daemon closed this record (the loss ended)."""
    daemon_pid: int
    """The daemon that lost them."""
    reason: str
    """Why, in words."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> SpoolLoss | None:
        """The record of a parsed line, or None when it does not have the shape of one."""
        if not isinstance(d, dict):
            return None
        ints = [v for v in (d.get(k) for k in ("lines_lost", "first_t_ns", "last_t_ns",
                                               "noticed_ns", "daemon_pid"))
                if type(v) is int and v >= 0]
        reason = d.get("reason")
        if len(ints) != 5 or not isinstance(reason, str):
            return None
        lines, first, last, noticed, pid = ints
        return cls(lines, first, last, noticed, pid, reason)


class LossLog:
    """The spool writer's account of lost samples: an open interval while samples are being
    dropped, closed records, and the file they go to once the disk takes writes.

    Thread-safe: the spool thread adds and flushes, the socket thread reads `status`.
    """

    def __init__(self, spool_dir: Path, pid: int) -> None:
        self.path = Path(spool_dir) / LOSSES_FILE
        self.pid = pid
        self._lock = threading.Lock()
        self._open: list[Any] | None = None  # [lines, first_t_ns, last_t_ns, reason]
        self._unwritten: list[SpoolLoss] = []
        self._recent: list[SpoolLoss] = []
        self.lines_lost = 0
        self.lines_recorded = 0
        """Lost lines whose record is on disk."""

    def dropped(self, t_ns: int, reason: str) -> None:
        """One sample dropped now; it joins the open interval (opened, and logged, if none)."""
        with self._lock:
            self.lines_lost += 1
            if self._open is None:
                self._open = [1, t_ns, t_ns, reason]
                opened = True
            else:
                self._open[0] += 1
                self._open[1] = min(self._open[1], t_ns)
                self._open[2] = max(self._open[2], t_ns)
                opened = False
        if opened:
            log.error("spool: losing samples from t_ns %d on: %s; counted in status "
                      "(spool.lost) and recorded in %s once the disk takes writes",
                      t_ns, reason, self.path)

    def add(self, lines: int, first_t_ns: int, last_t_ns: int, reason: str) -> None:
        """A closed loss of `lines` samples (e.g. ticks the sampler could not queue)."""
        if lines <= 0:
            return
        with self._lock:
            self.lines_lost += lines
            self._close_locked(SpoolLoss(lines, first_t_ns, last_t_ns, time.time_ns(),
                                         self.pid, reason))

    def end(self) -> None:
        """The dropping stopped (the disk works again, or the daemon stops): close the open
        interval into a record."""
        with self._lock:
            if self._open is not None:
                lines, first, last, reason = self._open
                self._open = None
                self._close_locked(SpoolLoss(lines, first, last, time.time_ns(), self.pid,
                                             reason))

    def _close_locked(self, loss: SpoolLoss) -> None:
        self._unwritten.append(loss)
        self._recent = (self._recent + [loss])[-_RECENT:]
        log.warning("spool: lost %d samples between t_ns %d and %d: %s", loss.lines_lost,
                    loss.first_t_ns, loss.last_t_ns, loss.reason)

    @property
    def losing(self) -> bool:
        """True while an interval of drops is open."""
        return self._open is not None

    @property
    def pending(self) -> bool:
        """True when a record waits to be written."""
        return bool(self._unwritten)

    def flush(self) -> bool:
        """Append the closed records to the losses file; True when none is left unwritten."""
        with self._lock:
            todo = list(self._unwritten)
        if not todo:
            return True
        data = b"".join(json.dumps(loss.to_dict(), separators=(",", ":")).encode() + b"\n"
                        for loss in todo)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            return False
        if written != len(data):
            return False  # a torn last line is skipped by the reader; written again next time
        with self._lock:
            del self._unwritten[:len(todo)]
            self.lines_recorded += sum(loss.lines_lost for loss in todo)
        return True

    def give_up(self) -> None:
        """The daemon stops and the records cannot be written: say so in the log."""
        with self._lock:
            todo, self._unwritten = list(self._unwritten), []
        for loss in todo:
            log.error("spool: could not record the loss of %d samples between t_ns %d and %d "
                      "in %s (%s)", loss.lines_lost, loss.first_t_ns, loss.last_t_ns,
                      self.path, loss.reason)

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = None if self._open is None else {
                "lines_lost": self._open[0], "first_t_ns": self._open[1],
                "last_t_ns": self._open[2], "reason": self._open[3]}
            return {"lost": self.lines_lost, "lost_recorded": self.lines_recorded,
                    "losing": current, "losses": [loss.to_dict() for loss in self._recent],
                    "losses_file": str(self.path)}


def read_losses(spool_dir: Path) -> list[SpoolLoss]:
    """Every loss record in `spool_dir` (malformed or torn lines skipped), oldest first."""
    try:
        data = (Path(spool_dir) / LOSSES_FILE).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            loss = SpoolLoss.from_dict(json.loads(line))
        except ValueError:
            continue
        if loss is not None:
            out.append(loss)
    out.sort(key=lambda x: (x.first_t_ns, x.noticed_ns))
    return out


def spool_losses(home: Path | str | None, t0_ns: int, t1_ns: int) -> list[SpoolLoss]:
    """The loss records of `home`'s spool whose interval overlaps [t0_ns, t1_ns].

    Args:
        home: the data dir (the default one when None); the records are in its spool dir.
        t0_ns: window start, wall clock.
        t1_ns: window end (inclusive).
    """
    if t1_ns < t0_ns:
        raise ValueError(f"window ends before it starts ({t0_ns} > {t1_ns})")
    spool_dir = home_mod.spool_dir(Path(home) if home is not None else None)
    return [loss for loss in read_losses(spool_dir)
            if loss.first_t_ns <= t1_ns and loss.last_t_ns >= t0_ns]
