"""Append-only spool files: every sample the daemon takes, on disk, until ingested.

Layout: `<home>/spool/samples-<first_t_ns>-<pid>.jsonl`, one JSON line a sample (the bytes of
`Sample.to_json()` + newline), one file a segment. Why this shape:
- A tick's lines go out in one `os.write` on an O_APPEND descriptor, with no user-space
  buffer, so a SIGKILLed daemon loses no finished tick (the page cache keeps it). A reader
  may meet the line being written: an unterminated last line is ignored, a malformed line
  anywhere is skipped.
- The name carries the segment's first t_ns, so a window read opens only the segments that
  can overlap it: segment i holds samples from its first_t_ns up to the next segment's
  first_t_ns. Within a segment t_ns never decreases (the writer starts a new segment when
  the wall clock steps back), and a segment's mtime widens its end bound, so a clock step
  never hides a segment from a reader.
- Rotation by size or age keeps deletion coarse and cheap: `cleanup` drops whole segments.
- A full disk or unwritable dir never stops sampling: lines wait in a bounded in-memory
  backlog, one clear message is logged, and the writer retries every few seconds.
- Nothing is lost silently. When the backlog overflows, the oldest held lines are dropped
  and each drop is accounted for: the daemon's status shows `spool.lost` (total) and
  `spool.losing` (the interval being lost now), daemon.log gets a line when losing starts
  and one when it ends, and once the disk takes writes again a loss record is appended to
  `<home>/spool/losses.jsonl`, one JSON object a line:
  `{"lines_lost": n, "first_t_ns": t0, "last_t_ns": t1, "noticed_ns": t, "daemon_pid": p,
  "reason": "..."}` = n samples (all devices) with t0 <= t_ns <= t1 are not in the
  segments. `losses.spool_losses(home, t0_ns, t1_ns)` reads the records overlapping a
  window (profiling/daemon/losses.py has the details). Lines on disk + lines lost = lines
  sampled, exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiling.daemon.losses import LossLog
from profiling.daemon.wire import sample_line
from profiling.sample import FIELD_NAMES, SOURCES, Sample, SampleError

log = logging.getLogger("profiling.daemon.spool")

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_AGE_S = 600.0
DEFAULT_RETRY_S = 5.0
DEFAULT_BACKLOG_LINES = 100_000
MTIME_SLACK_NS = 2_000_000_000
"""File mtimes come from the kernel's coarse clock; allow this much beyond them."""

_SEGMENT_RE = re.compile(r"^samples-(\d+)-(\d+)\.jsonl$")
_T_PREFIX = b'{"t_ns":'
_INT_FIELDS = frozenset({"mem_used_bytes", "mem_total_bytes", "rss_bytes"})
_NUM_FIELDS = frozenset({"util_pct", "sm_active_pct", "tensor_active_pct", "dram_active_pct",
                         "power_w", "sm_clock_mhz", "temp_c", "cpu_pct"})


def segment_name(first_t_ns: int, pid: int) -> str:
    return f"samples-{first_t_ns}-{pid}.jsonl"


@dataclass(frozen=True, slots=True)
class Segment:
    """One spool file."""

    path: Path
    """The file."""
    first_t_ns: int
    """t_ns of its first sample, from the name."""
    pid: int
    """Pid of the daemon that wrote it, from the name."""


def list_segments(spool_dir: Path) -> list[Segment]:
    """The segments in `spool_dir`, oldest first; other files are ignored."""
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            out.append(Segment(Path(spool_dir) / name, int(m.group(1)), int(m.group(2))))
    out.sort(key=lambda s: (s.first_t_ns, s.pid, s.path.name))
    return out


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _end_bounds(segments: Sequence[Segment]) -> list[float]:
    """An upper bound on the t_ns of each segment's samples (inf for the newest)."""
    bounds: list[float] = []
    for i, seg in enumerate(segments):
        if i + 1 == len(segments):
            bounds.append(math.inf)
            continue
        bound = segments[i + 1].first_t_ns
        mtime = _mtime_ns(seg.path)
        if mtime is not None:
            bound = max(bound, mtime + MTIME_SLACK_NS)
        bounds.append(bound)
    return bounds


def segments_for_window(spool_dir: Path, t0_ns: int, t1_ns: int) -> list[Segment]:
    """The segments that may hold samples with t0_ns <= t_ns <= t1_ns."""
    segments = list_segments(spool_dir)
    return [seg for seg, end in zip(segments, _end_bounds(segments), strict=True)
            if seg.first_t_ns <= t1_ns and end >= t0_ns]


# -- writing ---------------------------------------------------------------------------------

class SpoolWriter:
    """Appends encoded samples to the current segment, rotating by size, age or clock step.

    Not thread-safe: one thread (the daemon's spool thread) owns it.
    """

    def __init__(self, spool_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_s: float = DEFAULT_MAX_AGE_S, retry_s: float = DEFAULT_RETRY_S,
                 backlog_lines: int = DEFAULT_BACKLOG_LINES, pid: int | None = None) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.pid = os.getpid() if pid is None else pid
        self._fd: int | None = None
        self._path: Path | None = None
        self._seg_bytes = 0
        self._seg_opened = 0.0
        self._last_t_ns = -1
        self._backlog: deque[tuple[int, bytes]] = deque(maxlen=max(1, backlog_lines))
        self._failing = False
        self._retry_at = 0.0
        self._last_error: str | None = None
        self.lines_written = 0
        self.losses = LossLog(self.spool_dir, self.pid)
        """Lines that never reached the disk: counted, logged and recorded (docstring)."""
        self.segments_opened = 0
        self.errors = 0

    @property
    def segment_path(self) -> Path | None:
        """The segment being appended to, if one is open."""
        return self._path

    @property
    def failing(self) -> bool:
        return self._failing

    @property
    def lines_lost(self) -> int:
        """Lines dropped without reaching the disk (each one in a loss record)."""
        return self.losses.lines_lost

    def note_loss(self, lines: int, first_t_ns: int, last_t_ns: int, reason: str) -> None:
        """Account for lines lost before they reached this writer (recorded with the rest)."""
        self.losses.add(lines, first_t_ns, last_t_ns, reason)

    def write_samples(self, samples: Sequence[Sample]) -> bool:
        return self.write([(s.t_ns, sample_line(s)) for s in samples])

    def write(self, entries: Sequence[tuple[int, bytes]], *, force: bool = False) -> bool:
        """Append one tick's (t_ns, line) entries; True when they and any backlog are on disk.

        While the spool is failing, entries join the backlog and a write is tried again only
        every `retry_s` (or now, with force=True). When the backlog is full the oldest lines
        are dropped and counted in `lines_lost`; the loss record is written once the disk
        takes writes again.
        """
        if not self._backlog and not self._failing:
            pending: Sequence[tuple[int, bytes]] = entries
        else:
            self._hold(entries)
            if not force and time.monotonic() < self._retry_at:
                return False
            pending = list(self._backlog)
            self._backlog.clear()
        written = self._append(pending)
        if written == len(pending):
            if self._failing:
                self._failing = False
                log.warning("spool: %s is writable again; wrote %d held samples (%d lost)",
                            self.spool_dir, len(pending), self.lines_lost)
            if self.losses.losing or self.losses.pending:
                self.losses.end()
                self.losses.flush()
            return True
        self._hold(pending[written:])
        return False

    def _hold(self, entries: Iterable[tuple[int, bytes]]) -> None:
        for entry in entries:
            if len(self._backlog) == self._backlog.maxlen:
                self.losses.dropped(self._backlog[0][0],
                                    f"spool unwritable ({self._last_error}) and its backlog "
                                    f"of {self._backlog.maxlen} samples full")
            self._backlog.append(entry)

    def _append(self, entries: Sequence[tuple[int, bytes]]) -> int:
        """Write entries in order, opening or rotating segments; returns how many made it."""
        done = 0
        try:
            i = 0
            while i < len(entries):
                self._maybe_rotate(entries[i][0])
                assert self._fd is not None
                # Gather lines up to the size limit or a clock step; one write for them all.
                j = i
                size = self._seg_bytes
                last = self._last_t_ns
                chunk = []
                while j < len(entries) and entries[j][0] >= last and \
                        (j == i or size < self.max_bytes):
                    last = entries[j][0]
                    chunk.append(entries[j][1])
                    size += len(entries[j][1])
                    j += 1
                data = b"".join(chunk)
                off = 0
                try:
                    while off < len(data):
                        off += os.write(self._fd, data[off:])
                finally:
                    # Count the lines that landed whole, even when the write failed midway.
                    landed = 0
                    acc = 0
                    for line in chunk:
                        acc += len(line)
                        if acc > off:
                            break
                        landed += 1
                    self._seg_bytes += off
                    self.lines_written += landed
                    done += landed
                    if landed:
                        self._last_t_ns = entries[i + landed - 1][0]
                i = j
        except OSError as e:
            self._fail(e)
        return done

    def _maybe_rotate(self, t_ns: int) -> None:
        if self._fd is not None:
            if (self._seg_bytes >= self.max_bytes
                    or time.monotonic() - self._seg_opened >= self.max_age_s
                    or t_ns < self._last_t_ns):
                self._close_segment()
        if self._fd is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / segment_name(t_ns, self.pid)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._path = path
            self._seg_bytes = 0
            self._seg_opened = time.monotonic()
            self._last_t_ns = t_ns
            self.segments_opened += 1

    def _close_segment(self) -> None:
        fd, self._fd = self._fd, None
        self._path = None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _fail(self, e: OSError) -> None:
        self.errors += 1
        # A half-written line may end the segment; a new segment starts on recovery, and the
        # reader skips the torn line.
        self._close_segment()
        self._retry_at = time.monotonic() + self.retry_s
        self._last_error = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        if not self._failing:
            self._failing = True
            log.error("spool: cannot write to %s (%s); sampling goes on into memory "
                      "(up to %d samples held) and the spool is retried every %.0f s",
                      self.spool_dir, self._last_error, self._backlog.maxlen, self.retry_s)

    def rotate(self) -> None:
        """Close the current segment; the next write opens a new one."""
        self._close_segment()

    def close(self) -> None:
        """Write what is held (one last try), fsync and close; what still cannot be written
        is lost, and recorded as such (or logged when even that fails)."""
        if self._backlog:
            self.write([], force=True)
        if self._backlog:
            reason = f"daemon stopped while the spool was unwritable ({self._last_error})"
            self.losses.end()  # what the full backlog dropped is one record, this another
            for t_ns, _ in self._backlog:
                self.losses.dropped(t_ns, reason)
            self._backlog.clear()
        self.losses.end()
        if not self.losses.flush():
            self.losses.give_up()
        self._close_segment()

    def status(self) -> dict[str, Any]:
        return {"dir": str(self.spool_dir),
                "segment": self._path.name if self._path else None,
                "segment_bytes": self._seg_bytes, "lines_written": self.lines_written,
                "failing": self._failing, "last_error": self._last_error,
                "held": len(self._backlog), "errors": self.errors, **self.losses.status()}


# -- reading ---------------------------------------------------------------------------------

def _valid(d: Any) -> bool:
    """True when a parsed line has the shape of a Sample (cheaper than building one)."""
    if not isinstance(d, dict):
        return False
    t = d.get("t_ns")
    if type(t) is not int or t < 0:
        return False
    dev, src, host = d.get("device"), d.get("source"), d.get("host")
    if not isinstance(dev, str) or not dev or src not in SOURCES or not isinstance(host, str):
        return False
    for name in _INT_FIELDS:
        v = d.get(name)
        if v is not None and type(v) is not int:
            return False
    for name in _NUM_FIELDS:
        v = d.get(name)
        if v is not None and (type(v) is not float and type(v) is not int):
            return False
    return True


def _quick_t_ns(line: bytes) -> int | None:
    """t_ns read straight off the line's prefix (it is the first field), or None."""
    if not line.startswith(_T_PREFIX):
        return None
    end = line.find(b",", len(_T_PREFIX))
    if end < 0:
        return None
    try:
        return int(line[len(_T_PREFIX):end])
    except ValueError:
        return None


def _scan(spool_dir: Path, t0_ns: int, t1_ns: int,
          devices: set[str] | None) -> tuple[list[dict[str, Any]], int]:
    """Records in the window (sorted by t_ns) and the count of malformed lines skipped."""
    if t1_ns < t0_ns:
        raise ValueError(f"window ends before it starts ({t0_ns} > {t1_ns})")
    rows: list[dict[str, Any]] = []
    skipped = 0
    for seg in segments_for_window(Path(spool_dir), t0_ns, t1_ns):
        try:
            data = seg.path.read_bytes()
        except FileNotFoundError:  # removed by a concurrent cleanup
            continue
        lines = data.split(b"\n")
        lines.pop()  # "" after a final newline, or a torn line still being written
        for line in lines:
            t = _quick_t_ns(line)
            if t is not None and not t0_ns <= t <= t1_ns:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not _valid(d):
                skipped += 1
                continue
            if not t0_ns <= d["t_ns"] <= t1_ns:
                continue
            if devices is not None and d["device"] not in devices:
                continue
            rows.append(d)
    if skipped:
        log.debug("spool: skipped %d malformed lines in %s", skipped, spool_dir)
    rows.sort(key=lambda d: d["t_ns"])
    return rows, skipped


def read_samples(spool_dir: Path, t0_ns: int, t1_ns: int,
                 devices: set[str] | None = None) -> list[Sample]:
    """Samples with t0_ns <= t_ns <= t1_ns (inclusive), of `devices` (all when None).

    Sorted by t_ns. To interpolate a metric at the window's edges, widen the window by a
    sample period or two before calling.
    """
    rows, _ = _scan(spool_dir, t0_ns, t1_ns, devices)
    out = []
    for d in rows:
        try:
            out.append(Sample.from_dict(d))
        except SampleError:
            continue
    return out


def read_columns(spool_dir: Path, t0_ns: int, t1_ns: int,
                 devices: set[str] | None = None) -> dict[str, list[Any]]:
    """Like read_samples, as columns in FIELD_NAMES order (ready for pyarrow.table)."""
    rows, _ = _scan(spool_dir, t0_ns, t1_ns, devices)
    return {name: [d.get(name) for d in rows] for name in FIELD_NAMES}


def cleanup(spool_dir: Path, older_than_ns: int) -> list[Path]:
    """Delete the segments whose samples all have t_ns < older_than_ns; returns them.

    The newest segment is never deleted: a daemon may be appending to it.
    """
    segments = list_segments(Path(spool_dir))
    removed = []
    for seg, end in zip(segments[:-1], _end_bounds(segments)[:-1], strict=True):
        if end <= older_than_ns:
            try:
                seg.path.unlink()
            except FileNotFoundError:
                continue
            removed.append(seg.path)
    return removed
