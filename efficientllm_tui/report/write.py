"""Write a report folder: index.html (self-contained), report.md and charts/*.svg + *.png.

Only these files are written; each is written to a temporary name and renamed, so a failure
never leaves a half-written file. Charts of an earlier report in the same folder that this
one does not draw (a workload fewer) are removed, so the folder never holds a chart that
neither page shows; other files are left alone."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

from efficientllm_tui.errors import BadInput
from efficientllm_tui.report import chart, html, markdown
from efficientllm_tui.report.record import Report


def check_dir(out_dir: Path) -> Path:
    """The output folder, made if missing.

    Raises:
        BadInput: The path is a file, or the folder cannot be made.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"-o {out_dir} is a file; give a folder for the report")
    try:
        (out_dir / "charts").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot make report folder {out_dir}: {e.strerror or e}") from None
    return out_dir


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write the report's files under `out_dir`; returns their paths (HTML, Markdown, then
    the charts, SVG before PNG).

    Raises:
        BadInput: `out_dir` is a file or a file cannot be written.
    """
    out_dir = check_dir(Path(out_dir))
    written: list[Path] = []
    svgs: dict[str, list[str]] = {}
    pngs: dict[str, list[str]] = {}
    for sec in report.sections:
        for wl in sec.workloads:
            for kind, draw in chart.REPORT_CHARTS.items():
                stem = f"{wl.tag.lower()}-{kind}"
                with chart.style(stem):
                    fig = draw(wl)
                    if fig is None:
                        continue
                    for suffix in ("svg", "png"):
                        path = out_dir / "charts" / f"{stem}.{suffix}"
                        atomic_write(path, functools.partial(chart.save, fig))
                        written.append(path)
                    svgs.setdefault(wl.tag, []).append(chart.svg_text(fig))
                pngs.setdefault(wl.tag, []).append(f"charts/{stem}.png")
    head = [out_dir / "index.html", out_dir / "report.md"]
    _write_text(head[0], html.render(report, svgs))
    _write_text(head[1], markdown.render(report, pngs))
    _remove_stale_charts(out_dir / "charts", set(written))
    return head + written


def _remove_stale_charts(charts: Path, written: set[Path]) -> None:
    """Delete the charts a report names `w<N>-<kind>.svg|png` that were not just written."""
    own = re.compile(rf"w\d+-({'|'.join(map(re.escape, chart.REPORT_CHARTS))})\.(svg|png)")
    for path in charts.iterdir():
        if path not in written and own.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def atomic_write(path: Path, write: Callable[[Path], object], what: str = "") -> None:
    """Call `write(tmp)` on a temporary name with the same suffix, then rename it to `path`;
    BadInput naming `what` (and the path) when it cannot be written."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix.lower()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write {what}{path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
