"""The real `efficientllm` under tmux, driven by keys as a user over SSH would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .scenes import seeded_copy

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
ROOT = Path(__file__).resolve().parents[2]


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=False, timeout=10
    ).stdout


def _wait(session: str, check: Callable[[str], bool], timeout_s: float = 30.0) -> str:
    """The pane's text (lines joined by spaces, so wrapped phrases match) once check passes."""
    end = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < end:
        screen = " ".join(_tmux("capture-pane", "-p", "-t", session).split())
        if check(screen):
            return screen
        time.sleep(0.1)
    raise AssertionError(
        f"timed out waiting for {check.__doc__ or 'the screen'}; it showed: {screen[:2000]}"
    )


def test_real_app_in_tmux(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    seeded_copy(home / "efficientllm.duckdb")
    session = f"efficientllm-test-{os.getpid()}"
    command = (
        f"cd {ROOT} && EFFICIENTLLM_HOME={home} TERM=xterm-256color "
        f"{sys.executable} -m efficientllm_tui.cli; sleep 0.2"
    )
    for attempt in range(5):  # a tmux server that is shutting down refuses new sessions
        started = subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "36", command],
            capture_output=True,
            check=False,
            timeout=10,
        )
        if started.returncode == 0:
            break
        time.sleep(0.3 * (attempt + 1))
    _tmux("resize-window", "-t", session, "-x", "120", "-y", "36")
    try:
        screen = _wait(session, lambda s: "no daemon" in s and "daemon start" in s)
        assert "efficientllm daemon start" in screen  # the hint, not a traceback
        assert "Traceback" not in screen
        _wait(session, lambda s: "tiny × fp16" in s)  # recent runs from the DB
        _tmux("send-keys", "-t", session, "3")
        # the status line can be drawn a frame before the rows: wait for both
        screen = _wait(session, lambda s: "5 runs" in s and "qwen2.5-7b" in s)
        assert "oom" in screen
        _tmux("send-keys", "-t", session, "5")
        _wait(session, lambda s: "read-only" in s)
        _tmux("send-keys", "-t", session, "C-r")
        screen = _wait(session, lambda s: "5 row(s)" in s)
        assert "176.2" in screen
        _tmux("send-keys", "-t", session, "F1")
        _wait(session, lambda s: "window 1 min" in s)
        _tmux("send-keys", "-t", session, "q")
        _wait(session, lambda s: "Dashboard" not in s, timeout_s=10)
    finally:
        _tmux("kill-session", "-t", session)
