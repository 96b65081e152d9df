"""A full disk under the spool: every sample is on disk or in a loss record, exactly."""

from __future__ import annotations

import json
import logging
import re
import resource
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from profiling.daemon import client
from profiling.daemon.losses import LOSSES_FILE, SpoolLoss, read_losses, spool_losses
from profiling.daemon.spool import SpoolWriter, list_segments
from tests.faults.daemon_rig import (
    home_fixture,  # noqa: F401
    log_text,
    spawn_daemon,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

RATE_HZ = 50
RING_S = 0.5  # the in-memory backlog holds RING_S * RATE_HZ + 1 = 26 lines (one device)


def _spool_lines(home: Path) -> list[int]:
    """t_ns of every whole line in the segments."""
    out = []
    for seg in list_segments(home / "spool"):
        data = seg.path.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn line in {seg.path.name}"
        out += [json.loads(line)["t_ns"] for line in data.splitlines()]
    return sorted(out)


def test_full_disk_loses_nothing_silently(home: Path) -> None:
    proc = spawn_daemon(home, "--rate-hz", str(RATE_HZ), "--ring-s", str(RING_S),
                        "--backends", "psutil", "--spool-retry-s", "0.2")
    daemon = psutil.Process(proc.pid)
    wait_for(lambda: status(home)["spool"]["lines_written"] >= 10, 5,
             "the spool to be written")
    hard = daemon.rlimit(psutil.RLIMIT_FSIZE)[1]
    t_full = time.time_ns()
    daemon.rlimit(psutil.RLIMIT_FSIZE, (0, hard))  # every file write now fails (EFBIG)
    try:
        wait_for(lambda: status(home)["spool"]["lost"] >= 30, 10,
                 "the backlog to overflow")
        during: dict[str, Any] = status(home)["spool"]
        assert during["failing"] and during["held"] == 26
        losing = during["losing"]
        assert losing["first_t_ns"] >= t_full and losing["lines_lost"] >= 30
        assert "File too large" in losing["reason"]
    finally:
        daemon.rlimit(psutil.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
    t_back = time.time_ns()
    wait_for(lambda: not status(home)["spool"]["failing"]
             and status(home)["spool"]["losing"] is None, 5, "the spool to recover")
    st = status(home)["spool"]
    assert st["lost"] == st["lost_recorded"] >= 30
    assert client.stop_daemon(home)
    proc.wait(5)

    # Conservation: every sample taken is in the spool or counted in a loss record.
    taken = int(re.findall(r"stopped after (\d+) samples", log_text(home))[-1])
    on_disk = _spool_lines(home)
    losses = spool_losses(home, 0, 2**63 - 1)
    assert len(losses) == 1
    loss = losses[0]
    assert loss.lines_lost == st["lost"]
    assert len(on_disk) + loss.lines_lost == taken
    assert loss.daemon_pid == proc.pid
    assert t_full <= loss.first_t_ns <= loss.last_t_ns <= t_back
    # The record describes the hole exactly: no sample on disk inside it, one at each side.
    assert not [t for t in on_disk if loss.first_t_ns <= t <= loss.last_t_ns]
    assert len([t for t in on_disk if t < loss.first_t_ns]) >= 10
    assert len([t for t in on_disk if t > loss.last_t_ns]) >= 26  # the held lines, written
    # windows that miss the hole see no loss
    assert spool_losses(home, 0, loss.first_t_ns - 1) == []
    assert spool_losses(home, loss.last_t_ns + 1, 2**63 - 1) == []
    assert spool_losses(home, loss.last_t_ns, loss.last_t_ns) == [loss]
    text = log_text(home)
    assert text.count(f"spool: lost {loss.lines_lost} samples between t_ns "
                      f"{loss.first_t_ns} and {loss.last_t_ns}") == 1


def test_stop_while_the_disk_is_full_records_what_it_held(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool dir should be")
    w = SpoolWriter(blocked, retry_s=3600.0, backlog_lines=3, pid=77)
    for t in range(1, 6):
        w.write([(t, b'{"t_ns":%d}\n' % t)])
    assert w.lines_lost == 2 and w.status()["losing"]["lines_lost"] == 2
    with caplog.at_level(logging.WARNING, logger="profiling.daemon.spool"):
        w.close()  # still unwritable: the 3 held lines are lost too, and cannot be recorded
    assert w.lines_lost == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not record the loss of" in m for m in messages) == 2
    assert any(m.startswith("spool: could not record the loss of 3 samples between t_ns 3 "
                            "and 5") for m in messages)
    # Once the dir is writable, the loss records land in losses.jsonl.
    blocked.unlink()
    w2 = SpoolWriter(blocked, retry_s=0.0, backlog_lines=2, pid=78)
    blocked.write_text("blocked again")
    for t in range(10, 15):
        w2.write([(t, b'{"t_ns":%d}\n' % t)])
    w2.note_loss(4, 20, 23, "the spool writer was stuck")
    blocked.unlink()
    w2.write([(30, b'{"t_ns":30}\n')], force=True)
    w2.close()
    got = read_losses(blocked)
    assert [(x.lines_lost, x.first_t_ns, x.last_t_ns, x.daemon_pid) for x in got] == \
        [(4, 10, 13, 78), (4, 20, 23, 78)]  # 10..13 pushed out of the 2-line backlog
    assert sum(x.lines_lost for x in got) == w2.lines_lost == 8
    assert (blocked / LOSSES_FILE).stat().st_mode & 0o777 == 0o600
    # A torn or foreign line in the file is skipped, not fatal.
    with open(blocked / LOSSES_FILE, "ab") as f:
        f.write(b'{"lines_lost": "x"}\n{"lines_lost": 1, "first')
    assert read_losses(blocked) == got
    assert SpoolLoss.from_dict(got[0].to_dict()) == got[0]
