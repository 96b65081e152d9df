"""`efficientllm daemon start|stop|status`: the profiling daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from efficientllm_tui.commands.common import (
    emit_json,
    home_dir,
)
from efficientllm_tui.display import duration, num
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
    elif args.action == "stop":
        print("profiling daemon stopped" if status["stopped"]
              else "no profiling daemon was running")
    else:
        print("\n".join(summary(status)))
    return 0


def summary(status: dict[str, Any]) -> list[str]:
    """A few lines saying what the daemon is doing (`--json` prints the whole state)."""
    if not status.get("running", True) or "pid" not in status:
        return ["profiling daemon: not running (the first run starts it, or "
                "`efficientllm daemon start`)"]
    how = ("started now" if status.get("launched") else "already running"
           ) if "launched" in status else "running"
    sim = " · SIMULATED GPU" if status.get("simulated") else ""
    lines = [f"profiling daemon: {how}, pid {status['pid']}, up "
             f"{duration(status.get('uptime_s'))}{sim}"]
    devices = ", ".join(status.get("devices") or []) or "no device"
    rate = status.get("rate_hz")
    lines.append(f"sampling {devices} at {num(rate)} Hz · {num(status.get('samples_taken'))} "
                 f"sample(s) · stops after {duration(status.get('idle_exit_s'))} idle")
    states = status.get("backend_states") or {}
    backends = [f"{name} {st.get('state', '?')}" + (f" ({st['reason']})" if st.get("reason")
                                                    and st.get("state") != "ok" else "")
                for name, st in states.items() if isinstance(st, dict)]
    if backends:
        lines.append("backends: " + " · ".join(backends))
    lines.append(f"watching {len(status.get('watched') or [])} run(s) · "
                 f"{num(status.get('subscribers'))} viewer(s) subscribed")
    spool = status.get("spool") or {}
    trouble = [f"{num(status.get(k))} {k.replace('_', ' ')}" for k in
               ("overruns", "ticks_missed", "backend_errors", "frames_dropped") if status.get(k)]
    if spool.get("lost"):
        trouble.append(f"{num(spool['lost'])} sample(s) lost by the spool")
    if spool.get("last_error"):
        trouble.append(f"spool: {spool['last_error']}")
    if status.get("lost_devices"):
        trouble.append("lost devices: " + ", ".join(map(str, status["lost_devices"])))
    lines.append("problems: " + "; ".join(trouble) if trouble else "no problems reported")
    lines.append("the whole state: efficientllm daemon status --json")
    return lines
