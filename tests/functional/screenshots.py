"""The docs screenshots from the deterministic scenes (tests.functional.scenes).

`python -m tests.functional.screenshots DIR [SCENE...]` writes one PNG per shot into DIR
(an SVG where `rsvg-convert` is missing).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html import unescape
from pathlib import Path

from .scenes import SCENES, scene_app, to_scene


def svg_to_png(svg: str, png: Path, width_px: int) -> bool:
    """Rasterise a Textual SVG screenshot with rsvg-convert, one glyph per terminal cell.

    rsvg ignores SVG textLength, so fonts whose braille or box glyphs are narrower than a
    cell would drift; every character is therefore placed at its own cell position.
    """
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return False

    def cells(m: re.Match[str]) -> str:
        attrs, x, length, text = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
        chars = unescape(text)
        if not chars:
            return m.group(0)
        step = length / len(chars)
        rest = re.sub(r'\s(x|textLength)="[^"]*"', "", attrs)
        out = []
        for i, ch in enumerate(chars):
            if ch in (" ", "\xa0"):
                continue
            esc = ch.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f'<text{rest} x="{x + i * step:.1f}">{esc}</text>')
        return "".join(out)

    fixed = re.sub(
        r'<text([^>]*?\sx="([\d.]+)"[^>]*?textLength="([\d.]+)"[^>]*)>([^<]*)</text>', cells, svg
    )
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False, encoding="utf-8") as f:
        f.write(fixed)
    try:
        subprocess.run([tool, "-w", str(width_px), f.name, "-o", str(png)], check=True)
    finally:
        os.unlink(f.name)
    return True


async def _shoot(out: Path, name: str, size: tuple[int, int], theme: str | None = None) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        app, feed = scene_app(Path(tmp) / "home", name)
        app.catalog = None  # the docs show the shipped catalog, as a user sees it
        try:
            async with app.run_test(size=size) as pilot:
                if theme:
                    app.theme = theme
                await to_scene(app, pilot, name)
                svg = app.export_screenshot(title=f"efficientllm · {name}")
        finally:
            feed.stop()
    stem = f"{name}-{size[0]}x{size[1]}" + (f"-{theme.split('-')[-1]}" if theme else "")
    path = out / f"{stem}.png"
    if not svg_to_png(svg, path, size[0] * 12):
        path = out / f"{stem}.svg"
        path.write_text(svg, encoding="utf-8")
    return path


SHOTS: tuple[tuple[str, tuple[int, int], str | None], ...] = (
    *((name, (120, 36), None) for name in SCENES),
    ("dashboard", (80, 24), None),
    ("dashboard", (120, 36), "textual-light"),
)
"""The docs screenshots: every screen at 120x36, the dashboard at 80x24 and in light."""


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/screens")
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(argv[1:])
    for name, size, theme in SHOTS:
        if not wanted or name in wanted:
            print(asyncio.run(_shoot(out, name, size, theme)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
