"""Where efficientllm keeps its files: the data dir and the fixed names inside it.

`$EFFICIENTLLM_HOME` wins, else `$XDG_DATA_HOME/efficientllm`, else
`~/.local/share/efficientllm`. Lives in `profiling` so the daemon, the runners and the
app agree on one layout without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_FILE = "efficientllm.duckdb"
RUNS_DIR = "runs"
SPOOL_DIR = "spool"
LOCKS_DIR = "locks"
SOCKET_FILE = "daemon.sock"
DAEMON_PID_FILE = "daemon.pid"
DAEMON_LOG_FILE = "daemon.log"


def data_dir() -> Path:
    """The data dir (not created here)."""
    env = os.environ.get("EFFICIENTLLM_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "efficientllm"


def runs_dir(home: Path | None = None) -> Path:
    return (home or data_dir()) / RUNS_DIR


def spool_dir(home: Path | None = None) -> Path:
    return (home or data_dir()) / SPOOL_DIR


def locks_dir(home: Path | None = None) -> Path:
    return (home or data_dir()) / LOCKS_DIR


def socket_path(home: Path | None = None) -> Path:
    return (home or data_dir()) / SOCKET_FILE


def default_db_path(home: Path | None = None) -> Path:
    return (home or data_dir()) / DB_FILE
