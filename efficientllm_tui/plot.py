"""The `compare --plot` chart: a self-contained SVG built as plain text (no plotting library).

One panel per metric, one horizontal bar per run, raw values with the unit the runs stored.
A missing value is written `n/a` and gets no bar (never a fake zero); a chart with any
simulated run says SIMULATED in its title, and every bar of a simulated run is marked: its
label ends in `[sim]`, its bar is hatched and carries `data-simulated="true"`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from efficientllm_tui.display import num, run_label
from efficientllm_tui.errors import BadInput
from efficientllm_tui.store.schema import METRIC_DIRECTIONS
from profiling import metric_catalog

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948",
           "#9c755f", "#ff9da7", "#bab0ac")
"""Bar colours, one per run (cycled), the same run the same colour in every panel."""

_LABEL_W, _BAR_W, _VALUE_W = 280, 380, 110  # columns: run label | bars | value text
_BAR_H, _GAP, _HEAD_H, _PANEL_GAP = 16, 5, 22, 18
_WIDTH = _LABEL_W + _BAR_W + _VALUE_W
_X0 = _LABEL_W  # where the bar area starts
_LABEL_CHARS = 36
_HATCH_ID = "sim-hatch"
_HATCH_DEF = (f'<defs><pattern id="{_HATCH_ID}" width="6" height="6" '
              'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
              '<rect width="3" height="6" fill="#ffffff" fill-opacity="0.6"/></pattern></defs>')
"""White diagonal stripes drawn over every bar of a simulated run."""
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def check_path(raw: str) -> Path:
    """The `--plot` path, refused unless it names an `.svg` file."""
    path = Path(raw).expanduser()
    if path.suffix.lower() != ".svg":
        raise BadInput(f"--plot writes SVG only: give a path ending in .svg, not {raw!r}")
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


def render_svg(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """The comparison chart of `runs` (store.get_run records) over `metrics`, as SVG text."""
    simulated = any(bool(r.get("simulated")) for r in runs)
    title = f"efficientllm compare: {len(runs)} run(s), raw metrics"
    if simulated:
        title = "SIMULATED GPU DATA - " + title
    body = [_text(16, 26, title, size=16, weight="bold",
                  fill="#c62828" if simulated else "#222", cls="title")]
    y = 44
    if simulated:
        body.append(_text(16, y, "runs marked [sim] (hatched bars) were profiled on a "
                          "simulated GPU: not real measurements", fill="#c62828"))
        y += 18
    if not metrics:
        body.append(_text(16, y + 14, "no metrics stored for these runs", fill="#666"))
        y += 24
    for name in metrics:
        panel, y = _panel(name, runs, y + _PANEL_GAP)
        body.extend(panel)
    height = y + _PANEL_GAP
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">')
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', head,
                      f"<title>{_esc(title)}</title>",
                      f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
                      *([_HATCH_DEF] if simulated else []), *body, "</svg>", ""])


def write_svg(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + os.replace); nothing half-written.

    Raises:
        BadInput: The path is a directory or cannot be written.
    """
    if path.is_dir():
        raise BadInput(f"--plot {path} is a directory; give a file path ending in .svg")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write plot {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _panel(name: str, runs: Sequence[Mapping[str, Any]], y: int) -> tuple[list[str], int]:
    """One metric's heading and bars starting at height `y`; returns them and the next y."""
    values = [_value(r, name) for r in runs]
    known = [v for v in values if v is not None]
    lo, hi = min([0.0, *known]), max([0.0, *known])
    span = (hi - lo) or 1.0
    zero_x = _X0 + (0.0 - lo) / span * _BAR_W
    out = [f"<g class=\"panel\" data-metric={_attr(name)}>",
           _text(16, y + 14, _heading(name, runs), weight="bold", cls="heading")]
    top = y = y + _HEAD_H
    for i, (run, v) in enumerate(zip(runs, values, strict=True)):
        sim = " [sim]" if run.get("simulated") else ""
        label = run_label(run, _LABEL_CHARS - len(sim)) + sim
        out.append(_text(_X0 - 8, y + 12, label, anchor="end", cls="label"))
        if v is None:
            out.append(_text(zero_x + 6, y + 12, "n/a", fill="#888", cls="na"))
        else:
            left, right = sorted((zero_x, _X0 + (v - lo) / span * _BAR_W))
            sim_attr = ' data-simulated="true"' if sim else ""
            box = f'x="{left:.1f}" y="{y}" width="{max(right - left, 1.0):.1f}" height="{_BAR_H}"'
            out.append(f'<rect class="bar" data-run={_attr(str(run.get("run_id")))}{sim_attr} '
                       f'{box} fill="{PALETTE[i % len(PALETTE)]}"/>')
            if sim:  # hatched over the run's colour: readable without the label, in print too
                out.append(f'<rect class="sim-hatch" {box} fill="url(#{_HATCH_ID})"/>')
            out.append(_text(max(right, zero_x + 1) + 6, y + 12, num(v), cls="value"))
        y += _BAR_H + _GAP
    out.append(f'<line x1="{zero_x:.1f}" y1="{top - 2}" x2="{zero_x:.1f}" y2="{y - _GAP + 2}" '
               'stroke="#444" stroke-width="1"/>')
    out.append("</g>")
    return out, y


def _heading(name: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """`it (IT) [tok/s], higher is better`: id, paper label, stored unit(s), direction."""
    known = metric_catalog.info(name)
    label = known.label if known is not None else name
    text = name if label == name else f"{name} ({label})"
    entries = [(r.get("metrics") or {}).get(name) for r in runs]
    units = sorted({str(e[1]) for e in entries if e and e[1]})
    if units:
        text += f" [{' / '.join(units)}]"
    if name in METRIC_DIRECTIONS:
        text += ", higher is better" if METRIC_DIRECTIONS[name] else ", lower is better"
    return text


def _value(run: Mapping[str, Any], name: str) -> float | None:
    """The run's finite value of metric `name`, or None when missing, null or not finite."""
    entry = (run.get("metrics") or {}).get(name)
    v = entry[0] if entry else None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _esc(text: str) -> str:
    """Text content, XML-escaped, with characters XML 1.0 cannot hold removed."""
    return escape(_BAD_XML.sub("", text))


def _attr(text: str) -> str:
    """A quoted, escaped XML attribute value."""
    return quoteattr(_BAD_XML.sub("", text))


def _text(x: float, y: float, text: str, *, size: int = 12, weight: str = "normal",
          fill: str = "#222", anchor: str = "start", cls: str = "") -> str:
    """One <text> element."""
    klass = f' class="{cls}"' if cls else ""
    return (f'<text{klass} x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
            f'fill="{fill}" text-anchor="{anchor}">{_esc(text)}</text>')
