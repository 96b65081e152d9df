"""Telling this data dir's daemon from any other process, before anything is signalled.

`daemon.pid` is a hint, never a proof: the daemon that wrote it may be long gone and its pid
reused by an unrelated process (an editor, a shell, another user's job). So nothing here
signals a pid because a file names it. A pid is this home's daemon only when /proc says so:
its command line runs `profiling.daemon` (`-m profiling.daemon.service` or
`-m profiling.daemon`), its `--home` is this data dir (or, without one, its working directory
is: the daemon changes into its data dir), it belongs to this user, and it was created no
later than the pid file was written (a pid reused after that is someone else).
"""

from __future__ import annotations

import fcntl
import os
import shlex
from pathlib import Path

import psutil

from profiling import home as home_mod

LOCK_FILE = "daemon.lock"
"""Held (flock, exclusive) by the running daemon of a data dir for its whole life."""
_MODULES = ("profiling.daemon.service", "profiling.daemon")
_SCRIPTS = ("profiling/daemon/service.py", "profiling/daemon/__main__.py")
_CLOCK_SLACK_S = 2.0
"""psutil create times come from boot time + clock ticks; allow this much against mtimes."""


def pid_from_file(home: Path) -> int | None:
    """The pid `daemon.pid` names, or None when there is none or it is not a number."""
    try:
        return int((home / home_mod.DAEMON_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _home_arg(cmd: list[str]) -> str | None:
    for i, arg in enumerate(cmd):
        if arg == "--home" and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith("--home="):
            return arg.split("=", 1)[1]
    return None


def _runs_daemon(cmd: list[str]) -> bool:
    for i, arg in enumerate(cmd):
        if arg == "-m" and i + 1 < len(cmd) and cmd[i + 1] in _MODULES:
            return True
        if arg.startswith("-m") and arg[2:] in _MODULES:
            return True
        if arg.replace(os.sep, "/").endswith(_SCRIPTS):
            return True
    return False


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def daemon_process(pid: int, home: Path, *, written_after: float | None = None
                   ) -> tuple[bool, str]:
    """(True, "") when `pid` is the running profiling daemon of `home`, else (False, why).

    Args:
        pid: the process to check.
        home: the data dir it must serve.
        written_after: when the pid came from a file, that file's mtime (seconds): a process
            created after it cannot be the one that wrote it.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False, "has exited"
            cmd = proc.cmdline()
            ctime = proc.create_time()
            uids = proc.uids()
    except psutil.NoSuchProcess:
        return False, "is not running"
    except psutil.AccessDenied:
        return False, "belongs to another user"
    if uids.real != os.getuid():
        return False, "belongs to another user"
    if not _runs_daemon(cmd):
        shown = shlex.join(cmd) if cmd else "a process with no command line"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return False, f"runs `{shown}`, not the profiling daemon"
    arg = _home_arg(cmd)
    try:
        where: str | Path = arg if arg is not None and os.path.isabs(arg) else proc.cwd()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False, "is not running"
    if not _same_dir(where, home):
        return False, f"is the profiling daemon of another data dir ({where})"
    if written_after is not None and ctime > written_after + _CLOCK_SLACK_S:
        return False, "started after the pid file was written (its pid was reused)"
    return True, ""


def pid_file_daemon(home: Path) -> tuple[int | None, bool, str]:
    """(pid named by daemon.pid, whether it is this home's running daemon, why not)."""
    path = home / home_mod.DAEMON_PID_FILE
    pid = pid_from_file(home)
    if pid is None:
        return None, False, "no pid file"
    if pid <= 0:
        return pid, False, "is not a process id"
    try:
        mtime: float | None = path.stat().st_mtime
    except OSError:
        mtime = None
    ours, why = daemon_process(pid, home, written_after=mtime)
    return pid, ours, why


def remove_pid_file(home: Path, pid: int) -> bool:
    """Remove daemon.pid if it still names `pid` (a new daemon may have just rewritten it)."""
    if pid_from_file(home) != pid:
        return False
    try:
        (home / home_mod.DAEMON_PID_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def lock_held(home: Path) -> bool:
    """True while a process holds the daemon lock of `home` (a daemon runs or is starting)."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
