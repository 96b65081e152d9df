"""What the app says when something fails: one notification with what to do, never a traceback.

Unexpected errors go to `tui.log` in the data dir with their traceback; the notification
names that file.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from textual.notifications import SeverityLevel

from efficientllm_tui.errors import EfficientLLMError


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification: its text, title, severity and how long it stays."""

    message: str
    title: str
    severity: SeverityLevel
    timeout_s: float


def error_notice(error: BaseException, where: str, home: Path) -> Notice:
    """The notification for a failure in `where` (a worker's name); logs unexpected ones."""
    from profiling.daemon.client import DaemonError

    if isinstance(error, EfficientLLMError):
        return Notice(error.msg, error.title, "error", 8)
    if isinstance(error, DaemonError):
        return Notice(f"{error}. Start it with: efficientllm daemon start", "Profiling daemon",
                      "warning", 8)
    if isinstance(error, OSError):
        what = f" ({error.filename})" if error.filename else ""
        return Notice(f"{error.strerror or error}{what}", "File error", "error", 8)
    path = log_exception(home, error, where)
    return Notice(f"{type(error).__name__}: {error}. Details in {path}", "Unexpected error",
                  "error", 10)


def log_exception(home: Path, error: BaseException, where: str) -> Path:
    """Append the traceback to `tui.log` in the data dir; returns the file's path."""
    path = home / "tui.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} in {where or 'app'}\n")
            f.write("".join(traceback.format_exception(error)))
    except OSError:
        pass
    return path
