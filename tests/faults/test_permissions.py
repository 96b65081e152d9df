"""The daemon's files are its user's only, whatever umask launched it or left them open."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiling import home as home_mod
from profiling.daemon import client
from tests.faults.daemon_rig import (
    IDLE_S,
    home_fixture,  # noqa: F401
    log_text,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a common login umask: files 0644, dirs 0755
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _modes(home: Path) -> dict[str, int]:
    names = ["daemon.log", "daemon.pid", "daemon.lock", "daemon.sock", "daemon.watch.json",
             "spool"]
    out = {n: _mode(home / n) for n in names if os.path.lexists(home / n)}
    out.update({f"spool/{p.name}": _mode(p) for p in (home / "spool").iterdir()})
    return out


def test_fresh_home_is_private(home: Path, loose_umask: None) -> None:
    client.ensure_daemon(home, rate_hz=20, idle_exit_s=IDLE_S)
    assert client.watch(home, os.getpid(), "run-p")
    wait_for(lambda: any(p.stat().st_size for p in (home / "spool").glob("samples-*")), 5,
             "a spool segment")
    modes = _modes(home)
    segments = [n for n in modes if n.startswith("spool/samples-")]
    assert len(segments) >= 1
    assert _mode(home) == 0o700
    assert modes == {"daemon.log": 0o600, "daemon.pid": 0o600, "daemon.lock": 0o600,
                     "daemon.sock": 0o600, "daemon.watch.json": 0o600, "spool": 0o700,
                     **dict.fromkeys(segments, 0o600)}


def test_files_left_open_are_made_private(home: Path, loose_umask: None) -> None:
    # What an older version (or a launcher's umask) left readable by everyone.
    (home / "spool").mkdir(parents=True, mode=0o755)
    old_segment = home / "spool" / "samples-1-1.jsonl"
    old_segment.write_text("")
    (home / "spool" / "losses.jsonl").write_text("")
    (home / home_mod.DAEMON_LOG_FILE).write_text("old log\n")
    (home / "daemon.log.1").write_text("older log\n")
    for path in (old_segment, home / "spool" / "losses.jsonl", home / "daemon.log",
                 home / "daemon.log.1"):
        os.chmod(path, 0o644)
    assert _mode(home / "spool") == 0o755
    client.ensure_daemon(home, idle_exit_s=IDLE_S)
    assert _mode(home / "daemon.log") == 0o600 and _mode(home / "daemon.log.1") == 0o600
    assert _mode(home / "spool") == 0o700
    assert _mode(old_segment) == 0o600 and _mode(home / "spool" / "losses.jsonl") == 0o600
    assert ("made private (this user only): daemon.log, daemon.log.1, spool, losses.jsonl, "
            "samples-1-1.jsonl\n") in log_text(home)
