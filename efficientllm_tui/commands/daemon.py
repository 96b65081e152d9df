"""`efficientllm daemon start|stop|status`: the profiling daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from efficientllm_tui.commands.common import (
    emit_json,
    home_dir,
)
from efficientllm_tui.errors import EfficientLLMError
from profiling.daemon import client


def cmd_daemon(args: argparse.Namespace) -> int:
    home = home_dir()
    if args.action == "start":
        try:
            info = client.ensure_daemon(home, rate_hz=args.rate_hz, idle_exit_s=args.idle_exit_s,
                                        simulate_gpu=True if args.simulate_gpu else None)
        except client.DaemonError as e:
            raise EfficientLLMError(f"could not start the profiling daemon: {e}") from None
        status: Any = {"running": True, "launched": info.launched, **(info.status or {})}
    elif args.action == "stop":
        try:
            stopped = client.stop_daemon(home, note=lambda line: print(line, file=sys.stderr))
        except client.DaemonError as e:
            raise EfficientLLMError(f"could not stop the profiling daemon: {e}") from None
        status = {"stopped": stopped}
    else:
        status = client.daemon_status(home)
        if status is None:
            status = {"running": False}
    if args.json:
        emit_json(status)
    else:
        for k, v in (status.items() if isinstance(status, dict) else [("status", status)]):
            print(f"{k}: {v}")
    return 0
