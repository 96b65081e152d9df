"""`efficientllm serve`: the real app in a real browser (headless Chromium driven by
Playwright), and the server's bad input (one line, exit 2).

The browser test reads what the app sends the page over its websocket (the terminal output
xterm.js draws on a canvas), presses keys in the page as a user would, and saves a
screenshot; docs/screens/browser-120x36.png is rewritten only when
EFFICIENTLLM_UPDATE_SCREENS=1, so a test run leaves the tree clean.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from efficientllm_tui.cli import main

from .scenes import seeded_copy

ROOT = Path(__file__).resolve().parents[2]
SCREEN_FILE = ROOT / "docs" / "screens" / "browser-120x36.png"
VIEWPORT = {"width": 1180, "height": 740}
"""About 120x36 cells at the page's 16 px font."""
CHROMIUM_ARGS = [  # this machine's network is closed: no background connections
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
_ESCAPES = re.compile(
    r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]"
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    """`efficientllm serve` over a seeded database, on a free port; ended with its apps."""
    home = tmp_path / "home"
    home.mkdir()
    seeded_copy(home / "efficientllm.duckdb")
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "efficientllm_tui.cli", "serve", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "EFFICIENTLLM_HOME": str(home)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield port
    finally:
        server.send_signal(signal.SIGINT)  # textual-serve stops on SIGINT, closing its apps
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:  # the server and the app processes it started share its session
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(5)
        log.close()


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no Chromium: .ci/run installs Debian's "
                    "chromium where apt works (apt-get install chromium)")
def test_the_app_in_a_browser(served: int, tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (scripts/setup.sh does)")
    frames: list[str] = []

    def on_websocket(ws: object) -> None:
        def take(payload: str | bytes) -> None:
            data = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
            frames.append(data)

        ws.on("framereceived", take)  # type: ignore[attr-defined]

    def wait_for(check: Callable[[str], bool], since: int = 0, timeout_s: float = 30) -> str:
        """The text drawn since frame `since` (escape sequences removed) once check passes."""
        end = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < end:
            text = _ESCAPES.sub("", "".join(frames[since:]))
            if check(text):
                return text
            page.wait_for_timeout(100)
        raise AssertionError(f"timed out; the page got: {text[-2000:]!r}")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("websocket", on_websocket)
            page.goto(f"http://127.0.0.1:{served}/", wait_until="commit")
            # The dashboard, with the stored runs of the database (the recent runs table).
            shown = wait_for(lambda t: "Dashboard" in t and "tiny × fp16" in t)
            assert "Traceback" not in shown
            page.locator(".textual-terminal").click()
            mark = len(frames)
            page.keyboard.press("3")  # Runs
            shown = wait_for(lambda t: "5 runs" in t and "qwen2.5-7b" in t, mark)
            assert "oom" in shown
            mark = len(frames)
            page.keyboard.press("5")  # SQL
            wait_for(lambda t: "read-only" in t, mark)
            mark = len(frames)
            page.keyboard.press("F1")  # back to the dashboard (the SQL editor takes "1")
            wait_for(lambda t: "window 1 min" in t and "tiny × fp16" in t, mark)
            page.wait_for_timeout(700)  # let the canvas catch up with the last frame
            shot = tmp_path / "browser.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (VIEWPORT["width"], VIEWPORT["height"])
    if os.environ.get("EFFICIENTLLM_UPDATE_SCREENS") == "1":
        SCREEN_FILE.write_bytes(png)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "host '0.0.0.0' can be reached from other machines"),
        (["--host", "no-such-host.invalid"], "cannot serve on host 'no-such-host.invalid'"),
        (["--port", "0"], "port must be 1-65535, got 0"),
        (["--port", "65536"], "port must be 1-65535, got 65536"),
        (["--host", ""], "host is empty"),
    ],
)
def test_bad_host_or_port_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"efficientllm: error: {message}")


def test_a_port_in_use_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (f"efficientllm: error: port {port} on 127.0.0.1 is in use (another "
                   "server?); pick another with --port\n")


def test_a_public_bind_warns_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from efficientllm_tui.commands import serve

    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path))
    served: list[str] = []

    class FakeServer:
        def serve(self) -> None:
            served.append("served")

    monkeypatch.setattr(serve, "_server", lambda command, host, port: FakeServer())
    port = _free_port()
    assert main(["serve", "--host", "0.0.0.0", "--port", str(port), "--public"]) == 0
    out, err = capsys.readouterr()
    assert served == ["served"]
    assert err.startswith("efficientllm: warning: serving on 0.0.0.0 port "
                          f"{port}, reachable from other machines with no login")
    assert f"http://0.0.0.0:{port}" in out
    assert f"ssh -L {port}:localhost:{port} HOST" in out
