"""The `compare --plot` chart: which metrics, which file, written atomically; drawn with
matplotlib by the report's chart module (efficientllm_tui.report.chart.compare).

One panel per metric, one horizontal bar per run, raw values with the unit the runs stored.
A missing value is written `n/a` and gets no bar (never a fake zero); a chart with any
simulated run says SIMULATED in its title, and every bar of a simulated run is marked: its
label ends in `[sim]`, its bar is hatched and its gid ends in `:sim`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from profiling import metric_catalog


def check_path(raw: str) -> Path:
    """The `--plot` path, refused unless it names an `.svg` or `.png` file."""
    path = Path(raw).expanduser()
    if path.suffix.lower() not in (".svg", ".png"):
        raise BadInput(f"--plot writes SVG or PNG: give a path ending in .svg or .png, "
                       f"not {raw!r}")
    return path


def metric_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric stored for at least one of the runs, sorted."""
    return sorted({n for r in runs for n in (r.get("metrics") or {})})


def choose_metrics(runs: Sequence[Mapping[str, Any]], wanted: str | None) -> list[str]:
    """The panels to draw: the paper's headline metrics the runs have (AMU, PCU, AL, the
    throughput, AEC, MCR, quality; every stored metric when they have none of those), or the
    comma list `wanted` (in its order).

    Raises:
        BadInput: A name in `wanted` that none of the runs has (the line lists the known ones).
    """
    known = metric_names(runs)
    if wanted is None:
        families = {r.get("family") for r in runs}
        family = next(iter(families)) if len(families) == 1 else None
        headline = [n for n in metric_catalog.headline(family if isinstance(family, str)
                                                       else None) if n in known]
        return headline or known
    names = list(dict.fromkeys(n.strip() for n in wanted.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown metric(s) {', '.join(unknown)}" if unknown else "no metric given"
        raise BadInput(f"--metrics: {what}; known for these runs: {', '.join(known) or 'none'}")
    return names


def write_chart(path: Path, runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> None:
    """Draw the comparison chart of `runs` (store.get_run records) over `metrics` and write
    it to `path` (SVG or PNG by the suffix) atomically: temp file + os.replace.

    Raises:
        BadInput: The path is a directory or cannot be written.
    """
    from efficientllm_tui.report import chart
    from efficientllm_tui.report.write import atomic_write

    if path.is_dir():
        raise BadInput(f"--plot {path} is a directory; give a file path ending in .svg or .png")

    def draw(tmp: Path) -> None:
        with chart.style(path.name):
            chart.save(chart.compare(runs, metrics), tmp)

    atomic_write(path, draw, "plot ")
