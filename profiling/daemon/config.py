"""What the profiling daemon is started with: `DaemonConfig`, the command line of
`python -m profiling.daemon.service` that builds it (`parse_args`), the daemon's log setup
and the modes of its private files."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiling import home as home_mod
from profiling.daemon.losses import LOSSES_FILE
from profiling.daemon.spool import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, DEFAULT_RETRY_S
from profiling.daemon.watching import WATCH_FILE

AUTO_BACKENDS = ("psutil", "nvml")
"""What `--backends auto` runs: the host always, NVML where available."""
SIMULATE_ENV = "EFFICIENTLLM_SIMULATE_GPU"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon is started with (the command line, parsed)."""

    home: Path
    """Data dir: socket, pid file, log, lock and spool live here."""
    rate_hz: float = 10.0
    """Samples per second per device."""
    idle_exit_s: float = 300.0
    """Exit after this long with no live watched pid and no subscriber; 0 never exits."""
    ring_s: float = 600.0
    """Seconds of history kept in memory for late subscribers."""
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    """Rotate a spool segment at this size."""
    spool_max_age_s: float = DEFAULT_MAX_AGE_S
    """Rotate a spool segment at this age."""
    spool_retry_s: float = DEFAULT_RETRY_S
    """While the spool cannot be written, try again this often."""
    retention_s: float = 7 * 24 * 3600.0
    """Delete spool segments older than this (0 keeps everything)."""
    backends: tuple[str, ...] = AUTO_BACKENDS
    """Backends to run; one that is unavailable is skipped, its reason in status."""
    queue_s: float = 30.0
    """Seconds of frames a slow subscriber may fall behind before frames are dropped."""
    simulate_gpu: bool = False
    """Run simulated GPUs in place of NVML (demos, tests); status says `simulated: true`."""
    gpm_interval_s: float = 0.1
    """Seconds between GPM samples (>= 0.1), independent of rate_hz."""
    seed: int = 0
    """Seed of the simulated GPUs."""
    sim_devices: int = 1
    """How many GPUs to simulate."""

    def backend_names(self) -> list[str]:
        """The backends to load, in order (simulated added when asked for)."""
        names = list(dict.fromkeys(self.backends))
        if self.simulate_gpu and "simulated" not in names:
            names.append("simulated")
        return names

    def backend_options(self, name: str, host: str) -> dict[str, Any]:
        """The keyword arguments backend `name` is loaded with."""
        if name == "nvml":
            return {"host": host, "gpm_interval_s": self.gpm_interval_s}
        if name == "simulated":
            return {"host": host, "seed": self.seed, "n_devices": self.sim_devices,
                    "home": self.home}
        if name == "psutil":
            return {"host": host}
        return {}


def setup_logging(home: Path) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s daemon[{os.getpid()}] %(message)s")
    handler = logging.FileHandler(home / home_mod.DAEMON_LOG_FILE, encoding="utf-8")
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if sys.stderr is not None and sys.stderr.isatty():
        tty = logging.StreamHandler()
        tty.setFormatter(fmt)
        root.addHandler(tty)


PRIVATE_FILES = (home_mod.DAEMON_LOG_FILE, home_mod.DAEMON_LOG_FILE + ".1",
                 home_mod.DAEMON_PID_FILE, "daemon.lock", WATCH_FILE)
"""The daemon's files in the data dir: the user's only (0600)."""


def make_private(home: Path) -> list[Path]:
    """Close what earlier versions or a launcher's umask left open: the daemon's files in
    `home` and every spool file become 0600, the spool dir 0700. Returns what changed.

    Only files of this user are touched; a failure to change one is logged, not raised.
    """
    spool = home_mod.spool_dir(home)
    paths = [(home / name, 0o600) for name in PRIVATE_FILES] + [(spool, 0o700)]
    try:
        paths += [(spool / name, 0o600) for name in sorted(os.listdir(spool))
                  if name.endswith(".jsonl") or name == LOSSES_FILE]
    except OSError:
        pass
    changed = []
    for path, mode in paths:
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() \
                    or stat.S_IMODE(st.st_mode) == mode:
                continue
            os.chmod(path, mode)
            changed.append(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            logging.getLogger("profiling.daemon").warning("cannot make %s private: %s", path, e)
    return changed


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> DaemonConfig:
    p = argparse.ArgumentParser(prog="python -m profiling.daemon.service",
                                description="efficientllm profiling daemon (one per data dir)")
    p.add_argument("--home", type=Path, default=None,
                   help="data dir (default: $EFFICIENTLLM_HOME or the XDG data dir)")
    p.add_argument("--rate-hz", type=_positive, default=10.0, help="samples per second")
    p.add_argument("--idle-exit-s", type=_non_negative, default=300.0,
                   help="exit after this long with nothing watched or subscribed (0: never)")
    p.add_argument("--ring-s", type=_positive, default=600.0, help="seconds kept in memory")
    p.add_argument("--spool-max-mib", type=_positive, default=DEFAULT_MAX_BYTES / 2**20,
                   help="rotate spool segments at this size")
    p.add_argument("--spool-max-age-s", type=_positive, default=DEFAULT_MAX_AGE_S,
                   help="rotate spool segments at this age")
    p.add_argument("--spool-retry-s", type=_positive, default=DEFAULT_RETRY_S,
                   help="retry an unwritable spool this often (seconds)")
    p.add_argument("--retention-h", type=_non_negative, default=168.0,
                   help="delete spool segments older than this (0: keep all)")
    p.add_argument("--backends", default="auto",
                   help="comma-separated backends to run: psutil, nvml, simulated; 'auto' "
                        "is psutil plus nvml where available (default: auto)")
    p.add_argument("--simulate-gpu", action=argparse.BooleanOptionalAction,
                   default=_env_flag(os.environ.get(SIMULATE_ENV)),
                   help=f"simulated GPUs in place of NVML (default: ${SIMULATE_ENV})")
    p.add_argument("--gpm-interval-s", type=float, default=0.1,
                   help="seconds between GPM samples, >= 0.1 (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated GPUs")
    p.add_argument("--sim-devices", type=int, default=1, help="how many GPUs to simulate")
    a = p.parse_args(argv)
    if a.rate_hz > 1000:
        p.error("--rate-hz above 1000 is not supported")
    if not a.gpm_interval_s >= 0.1:
        p.error("--gpm-interval-s must be >= 0.1 (NVML refreshes GPM counters every 100 ms)")
    if a.sim_devices < 1:
        p.error("--sim-devices must be >= 1")
    names: list[str] = []
    for b in (b.strip() for b in a.backends.split(",")):
        if b == "auto":
            names.extend(AUTO_BACKENDS)
        elif b:
            names.append(b)
    home = (a.home or home_mod.data_dir()).expanduser().absolute()
    return DaemonConfig(home=home, rate_hz=a.rate_hz, idle_exit_s=a.idle_exit_s,
                        ring_s=a.ring_s, spool_max_bytes=int(a.spool_max_mib * 2**20),
                        spool_max_age_s=a.spool_max_age_s,
                        spool_retry_s=a.spool_retry_s, retention_s=a.retention_h * 3600,
                        backends=tuple(dict.fromkeys(names)), simulate_gpu=bool(a.simulate_gpu),
                        gpm_interval_s=a.gpm_interval_s, seed=a.seed, sim_devices=a.sim_devices)


def _env_flag(value: str | None) -> bool:
    """EFFICIENTLLM_SIMULATE_GPU=1/true/yes/on turns simulation on."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
