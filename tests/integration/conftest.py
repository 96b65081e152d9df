"""Fixtures for tests that run the real CLI, runner and daemon as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Cli:
    """Runs `efficientllm` in a private data dir; stops its daemon afterwards."""

    home: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = False
                 ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "efficientllm_tui.cli", *args],
                             capture_output=True, text=True, env=self.env, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"exit {out.returncode}: {out.stderr}")
        return out

    def json(self, *args: str, timeout: float = 120) -> object:
        out = self(*args, timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    home = tmp_path / "home"
    env = dict(os.environ)
    env["EFFICIENTLLM_HOME"] = str(home)
    env["EFFICIENTLLM_DAEMON_IDLE_S"] = "20"
    env["EFFICIENTLLM_DISPATCHER_IDLE_S"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    c = Cli(home, env)
    yield c
    c("daemon", "stop", timeout=30)
    stop_dispatcher(home)


def stop_dispatcher(home: Path, timeout_s: float = 10.0) -> None:
    """End the data dir's dispatcher, if one runs (it would idle out by itself)."""
    from efficientllm_tui.runs import dispatcher

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = dispatcher.running_pid(home)
        if pid is None:
            return
        if pid > 0:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)
