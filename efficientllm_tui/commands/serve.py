"""`efficientllm serve`: the same Textual app in a browser, through textual-serve.

Each browser tab that opens the page gets its own `efficientllm tui` process over the same
data dir and database, driven through a websocket. The app has no login and can launch runs
and write to the database, so the server binds to this machine only (127.0.0.1) unless told
otherwise; the way to reach it from a laptop is an SSH tunnel, `ssh -L 8000:localhost:8000
HOST`, then http://localhost:8000. A bind that other machines can reach needs `--public` and
prints a warning. The host and port are checked before serving (bad input: one line, exit 2).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import shlex
import socket
import sys
from typing import Any

from efficientllm_tui.commands.common import db_path, home_dir
from efficientllm_tui.errors import BadInput

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TUNNEL_HINT = "ssh -L {port}:localhost:{port} HOST"


def cmd_serve(args: argparse.Namespace) -> int:
    host, port = str(args.host), int(args.port)
    addresses = bind_addresses(host, port)
    local = all(is_loopback(a) for a in addresses)
    if not local and not args.public:
        raise BadInput(
            f"host {host!r} can be reached from other machines and the app has no login; "
            f"pass --public to serve there anyway, or keep the default {DEFAULT_HOST} and "
            f"reach it through an SSH tunnel ({TUNNEL_HINT.format(port=port)})"
        )
    check_free(addresses, port)
    home = home_dir()
    command = shlex.join([sys.executable, "-m", "efficientllm_tui.cli", "tui",
                          "--db", str(db_path(args, home))])
    server = _server(command, host, port)
    if not local:
        print(f"efficientllm: warning: serving on {host} port {port}, reachable from other "
              "machines with no login: whoever reaches it can launch runs and write to the "
              f"database. Prefer {DEFAULT_HOST} and an SSH tunnel.", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"efficientllm: serving the app on http://{shown}:{port} (every browser tab runs "
          f"its own app; Ctrl+C stops). From another machine: "
          f"{TUNNEL_HINT.format(port=port)}, then http://localhost:{port}", flush=True)
    try:
        server.serve()
    except OSError as e:  # the port was taken between the check and the bind
        raise BadInput(f"cannot serve on {host} port {port}: {e.strerror or e}") from None
    return 0


def bind_addresses(host: str, port: int) -> list[str]:
    """The addresses a server bound to `host` listens on (what `host` resolves to)."""
    if not 1 <= port <= 65535:
        raise BadInput(f"port must be 1-65535, got {port}")
    if not host.strip():
        raise BadInput("host is empty; give an address or name, e.g. 127.0.0.1")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise BadInput(f"cannot serve on host {host!r}: {reason}") from None
    return sorted({str(info[4][0]) for info in infos})


def is_loopback(address: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_free(addresses: list[str], port: int) -> None:
    """Bind each address as the server will (SO_REUSEADDR, as aiohttp does) and let go."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise BadInput(f"port {port} on {address} is in use (another server?); "
                                   "pick another with --port") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise BadInput(f"cannot serve on {address}: not an address of this "
                                   "machine") from None
                raise BadInput(f"cannot serve on {address} port {port}: "
                               f"{e.strerror or e}") from None


def _server(command: str, host: str, port: int) -> Any:
    """A textual-serve Server that runs `command` for every browser tab."""
    try:
        from textual_serve.server import Server
    except ImportError:
        raise BadInput("textual-serve is not installed; scripts/setup.sh installs it "
                       "(or pip install textual-serve)") from None

    class AppServer(Server):  # type: ignore[misc]
        async def on_startup(self, app: Any) -> None:
            """Say nothing: cmd_serve has told where to go (textual-serve prints a logo)."""

        async def handle_index(self, request: Any) -> Any:
            # The page's links and websocket go back to the address the browser used: the
            # local end of a tunnel (any port), or a name when bound to a wildcard address.
            self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

    return AppServer(command, host=host, port=port, title="efficientllm")
