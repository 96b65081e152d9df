"""Spool segments: write, read, rotation, torn and malformed lines, window selection,
cleanup, and a spool that cannot be written."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from profiling.daemon import spool as spool_mod
from profiling.daemon.spool import (
    SpoolWriter,
    cleanup,
    list_segments,
    read_columns,
    read_samples,
    segments_for_window,
)
from profiling.daemon.wire import sample_line
from profiling.sample import FIELD_NAMES, Sample

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a realistic wall clock


def smp(i: int, device: str = "cpu", step_ns: int = 100_000_000) -> Sample:
    return Sample(t_ns=T0 + i * step_ns, host="h", device=device,
                  source="psutil", mem_used_bytes=1000 + i, mem_total_bytes=10_000,
                  util_pct=float(i), rss_bytes=None if i % 2 else 42)


def sec(i: int) -> Sample:
    """Samples a second apart: wider than the spool's mtime slack."""
    return smp(i, step_ns=S)


def write(writer: SpoolWriter, samples: list[Sample]) -> bool:
    return writer.write([(s.t_ns, sample_line(s)) for s in samples])


def settle_mtimes(spool_dir: Path) -> None:
    """Give each segment the mtime it would have had: that of its last sample."""
    for seg in list_segments(spool_dir):
        last = json.loads(seg.path.read_bytes().splitlines()[-1])["t_ns"]
        os.utime(seg.path, ns=(last, last))


def test_sample_line_is_to_json() -> None:
    s = smp(3)
    assert sample_line(s) == (s.to_json() + "\n").encode()


def test_round_trip_and_window(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    samples = [smp(i) for i in range(20)] + [smp(i, "gpu0") for i in range(20)]
    samples.sort(key=lambda s: s.t_ns)
    for i in range(0, len(samples), 2):  # two devices a tick
        assert write(w, samples[i:i + 2])
    w.close()
    assert read_samples(tmp_path, T0, T0 + 10 * S) == samples
    got = read_samples(tmp_path, smp(5).t_ns, smp(9).t_ns, devices={"gpu0"})
    assert [s.t_ns for s in got] == [smp(i).t_ns for i in range(5, 10)]  # inclusive edges
    assert all(s.device == "gpu0" for s in got)
    assert read_samples(tmp_path, T0 + 100 * S, T0 + 200 * S) == []
    assert read_samples(tmp_path / "missing", T0, T0 + S) == []
    with pytest.raises(ValueError):
        read_samples(tmp_path, T0 + S, T0)


def test_segment_name_and_permissions(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, pid=4242)
    write(w, [smp(0)])
    seg = list_segments(tmp_path)[0]
    assert seg.path.name == f"samples-{T0}-4242.jsonl"
    assert (seg.first_t_ns, seg.pid) == (T0, 4242)
    assert seg.path.stat().st_mode & 0o077 == 0
    w.close()


def test_every_tick_reaches_the_file_before_close(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    write(w, [smp(0)])
    write(w, [smp(1)])
    # no close(): what a SIGKILLed daemon leaves behind
    assert len(read_samples(tmp_path, T0, T0 + S)) == 2


def test_rotation_by_size(tmp_path: Path) -> None:
    line = len(sample_line(smp(0)))
    w = SpoolWriter(tmp_path, max_bytes=3 * line)
    samples = [smp(i) for i in range(10)]
    for s in samples:
        write(w, [s])
    write(w, [smp(i) for i in range(10, 20)])  # one big batch is split too
    w.close()
    segs = list_segments(tmp_path)
    assert len(segs) == 7
    assert all(seg.path.stat().st_size <= 3 * line + line for seg in segs)
    assert [seg.first_t_ns for seg in segs][:4] == [smp(i).t_ns for i in (0, 3, 6, 9)]
    assert len(read_samples(tmp_path, T0, T0 + 10 * S)) == 20


def test_rotation_by_age(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, max_age_s=0.0)
    for i in range(4):
        write(w, [smp(i)])
    w.close()
    assert len(list_segments(tmp_path)) == 4


def test_clock_step_back_rotates_and_stays_readable(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    write(w, [smp(10), smp(11)])
    write(w, [smp(5)])  # the wall clock stepped back
    write(w, [smp(6)])
    w.close()
    assert len(list_segments(tmp_path)) == 2
    # The older-named segment holds t 5..6 and the other 10..11; the mtime bound keeps the
    # segment named t=5 selectable for a window at t=10..11 and vice versa.
    got = read_samples(tmp_path, smp(5).t_ns, smp(11).t_ns)
    assert [s.t_ns for s in got] == [smp(i).t_ns for i in (5, 6, 10, 11)]


def test_window_selection_uses_names(tmp_path: Path) -> None:
    line = len(sample_line(sec(0)))
    w = SpoolWriter(tmp_path, max_bytes=10 * line)
    write(w, [sec(i) for i in range(30)])  # segments start at i = 0, 10, 20
    w.close()
    settle_mtimes(tmp_path)
    segs = list_segments(tmp_path)
    assert len(segs) == 3
    middle = segments_for_window(tmp_path, sec(12).t_ns, sec(15).t_ns)
    assert [s.first_t_ns for s in middle] == [sec(10).t_ns]
    edge = segments_for_window(tmp_path, sec(9).t_ns, sec(10).t_ns)
    assert [s.first_t_ns for s in edge] == [sec(0).t_ns, sec(10).t_ns]
    newest = segments_for_window(tmp_path, sec(500).t_ns, sec(600).t_ns)
    assert [s.first_t_ns for s in newest] == [sec(20).t_ns]  # may still grow
    assert segments_for_window(tmp_path, T0 - 10 * S, T0 - S) == []


def test_torn_last_line_is_ignored_until_complete(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    write(w, [smp(0), smp(1)])
    w.close()
    path = list_segments(tmp_path)[0].path
    whole = sample_line(smp(2))
    with open(path, "ab") as f:
        f.write(whole[:40])
    assert len(read_samples(tmp_path, T0, T0 + S)) == 2
    assert len(read_columns(tmp_path, T0, T0 + S)["t_ns"]) == 2
    with open(path, "ab") as f:
        f.write(whole[40:])
    assert len(read_samples(tmp_path, T0, T0 + S)) == 3


def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    write(w, [smp(0)])
    w.close()
    path = list_segments(tmp_path)[0].path
    good = json.loads(sample_line(smp(1)))
    bad = [b"garbage", b"[1, 2]", b"", b'{"t_ns": "soon"}',
           json.dumps({**good, "source": "bogus"}).encode(),
           json.dumps({**good, "util_pct": "high"}).encode(),
           json.dumps({**good, "t_ns": -5}).encode(),
           b'{"t_ns":' + str(T0).encode() + b',"host":',  # a torn line, mid-file
           json.dumps(good).encode()]
    with open(path, "ab") as f:
        f.write(b"\n".join(bad) + b"\n")
    got = read_samples(tmp_path, T0, T0 + S)
    assert [s.t_ns for s in got] == [smp(0).t_ns, smp(1).t_ns]
    cols = read_columns(tmp_path, T0, T0 + S)
    assert cols["t_ns"] == [smp(0).t_ns, smp(1).t_ns]


def test_read_columns(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path)
    samples = [smp(i) for i in range(5)]
    write(w, samples)
    w.close()
    cols = read_columns(tmp_path, T0, T0 + S, devices={"cpu"})
    assert tuple(cols) == FIELD_NAMES
    assert all(len(v) == 5 for v in cols.values())
    assert cols["rss_bytes"] == [42, None, 42, None, 42]
    assert cols["util_pct"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert read_columns(tmp_path, T0, T0 + S, devices={"gpu9"})["t_ns"] == []


def test_cleanup_removes_whole_old_segments(tmp_path: Path) -> None:
    line = len(sample_line(sec(0)))
    w = SpoolWriter(tmp_path, max_bytes=10 * line, pid=7)
    write(w, [sec(i) for i in range(30)])
    w.close()
    settle_mtimes(tmp_path)
    # samples 0..9 all end before sample 12; those of the segment 10..19 do not
    removed = cleanup(tmp_path, sec(12).t_ns)
    assert [p.name for p in removed] == [f"samples-{sec(0).t_ns}-7.jsonl"]
    assert [s.first_t_ns for s in list_segments(tmp_path)] == [sec(10).t_ns, sec(20).t_ns]
    # the newest segment always stays
    cleanup(tmp_path, sec(10_000).t_ns)
    assert [s.first_t_ns for s in list_segments(tmp_path)] == [sec(20).t_ns]
    assert len(read_samples(tmp_path, T0, T0 + 100 * S)) == 10


def test_unwritable_spool_holds_samples_logs_once_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool dir should be")
    w = SpoolWriter(blocked, retry_s=0.0)
    with caplog.at_level(logging.INFO, logger="profiling.daemon.spool"):
        for i in range(5):
            assert write(w, [smp(i)]) is False
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and str(blocked) in errors[0].getMessage()
        assert w.failing and w.status()["held"] == 5
        blocked.unlink()
        assert write(w, [smp(5)]) is True
    w.close()
    assert not w.failing
    assert [s.t_ns for s in read_samples(blocked, T0, T0 + S)] == [smp(i).t_ns for i in range(6)]


def test_retry_waits_and_backlog_is_bounded(tmp_path: Path) -> None:
    blocked = tmp_path / "spool"
    blocked.write_text("")
    w = SpoolWriter(blocked, retry_s=3600.0, backlog_lines=3)
    for i in range(5):
        write(w, [smp(i)])
    assert w.errors == 1  # retried only after retry_s
    assert w.status()["held"] == 3 and w.lines_lost == 2
    blocked.unlink()
    w.close()  # one last forced try
    assert [s.t_ns for s in read_samples(blocked, T0, T0 + S)] == [smp(i).t_ns for i in (2, 3, 4)]


def test_disk_full_mid_write_loses_and_duplicates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = SpoolWriter(tmp_path, retry_s=0.0)
    write(w, [smp(0)])
    real_write = os.write
    line = len(sample_line(smp(1)))

    calls = []

    def full_after_one_and_a_half_lines(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:  # a short write, as on a nearly full disk, then ENOSPC
            return real_write(fd, bytes(data[:line + line // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "write", full_after_one_and_a_half_lines)
    assert write(w, [smp(1), smp(2), smp(3)]) is False
    assert w.lines_written == 2  # smp(0) and smp(1) landed whole
    monkeypatch.setattr(spool_mod.os, "write", real_write)
    assert write(w, [smp(4)]) is True
    w.close()
    got = [s.t_ns for s in read_samples(tmp_path, T0, T0 + S)]
    assert got == [smp(i).t_ns for i in range(5)]
