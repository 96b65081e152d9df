"""Charts drawn with matplotlib for the report and `compare --plot`, as SVG and PNG.

matplotlib is imported inside the functions (the CLI starts without it), figures are made
with `matplotlib.figure.Figure` (no pyplot, no global backend) and drawn under fixed rcParams
(`style`) so the same data give the same bytes: a fixed `svg.hashsalt`, no date in the SVG,
text kept as text. Marked numbers (simulated, random weights, contended) are hatched and
their labels carry the markers. Elements tests look for carry a gid (`bar:it:0`).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from efficientllm_tui.display import num, run_label
from efficientllm_tui.report.record import MARKS, Stat, Workload
from efficientllm_tui.store.schema import METRIC_DIRECTIONS
from profiling import metric_catalog

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948",
           "#9c755f", "#ff9da7", "#bab0ac")
"""One colour per row (cycled), the same row the same colour in every panel."""
HATCH = "//"
"""Drawn over every bar of a marked (simulated, random-weight, contended) row or run."""
RC: dict[str, Any] = {
    "font.family": "DejaVu Sans", "font.size": 9, "svg.fonttype": "none",
    "figure.dpi": 100, "savefig.dpi": 100, "hatch.color": "#ffffff", "hatch.linewidth": 1.0,
    "axes.spines.top": False, "axes.spines.right": False, "path.simplify": False,
}
"""rcParams every chart is drawn under (see `style`)."""
_LABEL_CHARS = 36
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot hold: dropped from labels (a technique id or unit may carry them)."""


def clean(text: str) -> str:
    """Text safe for an SVG file: characters XML cannot hold removed, `$` escaped (matplotlib
    reads `$...$` as math)."""
    return _BAD_XML.sub("", text).replace("$", r"\$")


@contextlib.contextmanager
def style(salt: str) -> Iterator[None]:
    """Draw and save charts inside this: fixed rcParams, and `salt` as the SVG hash salt
    (give each chart of one page its own, so their ids differ)."""
    import matplotlib

    params: Any = {**RC, "svg.hashsalt": salt}
    with matplotlib.rc_context(params):
        yield


def save(fig: Any, path: Path) -> None:
    """Write the figure as SVG or PNG (by the suffix) with no date or software stamp."""
    fmt = path.suffix.lower().lstrip(".")
    meta = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(path, format=fmt, metadata=meta, bbox_inches=None)


def svg_text(fig: Any) -> str:
    """The figure as SVG text without the XML prolog (to inline in HTML)."""
    import io

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _heading(name: str, units: Sequence[str]) -> str:
    """`it (IT) [tok/s], higher is better`: id, paper label, unit(s), direction."""
    known = metric_catalog.info(name)
    label = known.label if known is not None else name
    text = name if label == name else f"{name} ({label})"
    if units:
        text += f" [{' / '.join(sorted(set(units)))}]"
    if name in METRIC_DIRECTIONS:
        text += ", higher is better" if METRIC_DIRECTIONS[name] else ", lower is better"
    return clean(text)


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


# --------------------------------------------------------------------------- compare --plot


def compare(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Any:
    """`compare --plot`: one panel per metric, one horizontal bar per run (raw values); a
    missing value says n/a (never a zero bar); simulated runs hatched and labelled [sim]."""
    simulated = any(bool(r.get("simulated")) for r in runs)
    labels = [clean(run_label(r, _LABEL_CHARS - 6)) + (" [sim]" if r.get("simulated") else "")
              for r in runs]
    n = max(1, len(metrics))
    fig = _figure(8.0, 0.9 + n * (0.55 + 0.3 * len(runs)))
    title = f"efficientllm compare: {len(runs)} run(s), raw metrics"
    if simulated:
        title = "SIMULATED GPU DATA - " + title + "\n(hatched bars, [sim]: a simulated GPU, " \
                "not real measurements)"
    fig.suptitle(title, color="#c62828" if simulated else "#222222", fontweight="bold",
                 gid="title")
    if not metrics:
        fig.text(0.5, 0.4, "no metrics stored for these runs", ha="center", gid="empty")
        return fig
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, metrics, strict=True):
        entries = [(r.get("metrics") or {}).get(name) for r in runs]
        values = [_finite(e[0]) if e else None for e in entries]
        ax.set_gid(f"panel:{name}")
        ax.set_title(_heading(name, [str(e[1]) for e in entries if e and e[1]]),
                     loc="left", fontweight="bold", fontsize=9)
        ys = list(range(len(runs)))[::-1]
        for i, (run, v, y) in enumerate(zip(runs, values, ys, strict=True)):
            sim = bool(run.get("simulated"))
            if v is None:
                ax.text(0, y, " n/a", va="center", color="#888888", gid=f"na:{name}:{i}")
                continue
            (bar,) = ax.barh([y], [v], color=PALETTE[i % len(PALETTE)],
                             hatch=HATCH if sim else None, height=0.7)
            bar.set_gid(f"bar:{name}:{i}" + (":sim" if sim else ""))
            ax.text(v, y, f" {num(v)}", va="center", gid=f"value:{name}:{i}")
        ax.set_yticks(ys, labels)
        ax.axvline(0, color="#444444", linewidth=0.8)
        known = [v for v in values if v is not None]
        hi = max([0.0, *known]) or 1.0
        ax.set_xlim(min([0.0, *known]), hi * 1.25)
    return fig


# --------------------------------------------------------------------------- report charts


def _row_label(label: str, marks: Sequence[str]) -> str:
    return clean(label) + (f" [{','.join(marks)}]" if marks else "")


def _legend_note(fig: Any, marks: Sequence[str]) -> None:
    if marks:
        text = "hatched / [" + ",".join(marks) + "]: " + "; ".join(
            f"{m} = {MARKS[m].split(':')[0]}" for m in marks)
        fig.supxlabel(text, fontsize=8, color="#c62828", gid="marks", x=0.01, ha="left")


def bars(wl: Workload) -> Any:
    """One panel per headline metric: the median of each row, error bars from min to max
    over its repeats; hatched rows are marked."""
    n = max(1, len(wl.metrics))
    fig = _figure(8.0, 1.0 + n * (0.6 + 0.3 * len(wl.rows)))
    fig.suptitle(f"{wl.tag}: {wl.family} / {wl.group}, {wl.model} (median, min-max of n)",
                 fontweight="bold", gid="title")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    ys = list(range(len(wl.rows)))[::-1]
    labels = [_row_label(r.label, r.marks) for r in wl.rows]
    for ax, name in zip(axes, wl.metrics, strict=False):
        ax.set_gid(f"panel:{name}")
        units = [u for r in wl.rows if (u := r.stats[name].unit)]
        ax.set_title(_heading(name, units), loc="left", fontweight="bold", fontsize=9)
        for i, (row, y) in enumerate(zip(wl.rows, ys, strict=True)):
            s = row.stats[name]
            if s.median is None:
                ax.text(0, y, " n/a", va="center", color="#888888", gid=f"na:{name}:{i}")
                continue
            (bar,) = ax.barh([y], [s.median], xerr=_spread(s), capsize=3,
                             color=PALETTE[i % len(PALETTE)], height=0.7,
                             hatch=HATCH if row.marks else None)
            bar.set_gid(f"bar:{name}:{i}" + (":marked" if row.marks else ""))
            ax.text(s.hi if s.hi is not None else s.median, y, f" {num(s.median)} (n={s.n})",
                    va="center", gid=f"value:{name}:{i}")
        ax.set_yticks(ys, labels)
        known = [hi for r in wl.rows if (hi := r.stats[name].hi) is not None]
        ax.set_xlim(min([0.0, *known]), (max([0.0, *known]) or 1.0) * 1.35)
    _legend_note(fig, wl.marks)
    return fig


def scatter(wl: Workload) -> Any | None:
    """Trade-off: AEC (W) against the family's throughput, one point per row (medians);
    None when no row has both."""
    x_name = metric_catalog.THROUGHPUT.get(wl.family)
    points = [(i, r, x, y) for i, r in enumerate(wl.rows)
              if (x := r.stats.get(x_name or "")) is not None and x.median is not None
              and (y := r.stats.get("aec_w")) is not None and y.median is not None]
    if not points or x_name is None:
        return None
    fig = _figure(6.5, 4.5)
    ax = fig.subplots()
    ax.set_gid("panel:tradeoff")
    fig.suptitle(f"{wl.tag}: AEC vs {metric_catalog.label(x_name, with_unit=False)}, "
                 f"{wl.model}", fontweight="bold", gid="title")
    for i, row, x, y in points:
        colour = PALETTE[i % len(PALETTE)]
        ax.errorbar([x.median], [y.median], xerr=_spread(x), yerr=_spread(y), fmt="o",
                    color=colour, capsize=3, mfc="none" if row.marks else colour,
                    gid=f"point:{i}")
        ax.annotate(_row_label(row.label, row.marks), (x.median, y.median),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(_heading(x_name, [u for *_, x, _ in points if (u := x.unit)]))
    ax.set_ylabel(_heading("aec_w", [u for *_, y in points if (u := y.unit)]))
    _legend_note(fig, wl.marks)
    return fig


def _spread(s: Stat) -> list[list[float]] | None:
    """Error-bar lengths below and above the median (min and max), None for one value."""
    if s.n < 2 or s.median is None or s.lo is None or s.hi is None:
        return None
    return [[s.median - s.lo], [s.hi - s.median]]


def loss(wl: Workload) -> Any | None:
    """Training loss over steps, one line per run, one colour per row; None without steps."""
    if not wl.curves:
        return None
    fig = _figure(6.5, 4.5)
    ax = fig.subplots()
    ax.set_gid("panel:loss")
    fig.suptitle(f"{wl.tag}: training loss, {wl.model}", fontweight="bold", gid="title")
    order = [r.label for r in wl.rows]
    marks = {r.label: r.marks for r in wl.rows}
    seen: set[str] = set()
    for c in wl.curves:
        i = order.index(c.label) if c.label in order else 0
        ax.plot(c.steps, c.loss, color=PALETTE[i % len(PALETTE)],
                linestyle="--" if marks.get(c.label) else "-", linewidth=1.2,
                label=None if c.label in seen else _row_label(c.label, marks.get(c.label, ())),
                gid=f"curve:{c.run_id}")
        seen.add(c.label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss [nats/token]")
    ax.legend(fontsize=8)
    _legend_note(fig, wl.marks)
    return fig


def latency(wl: Workload) -> Any | None:
    """Inference latency percentiles p50/p90/p99 per row (medians over repeats); None when
    no row stored them."""
    names = ("al_p50_s", "al_p90_s", "al_p99_s")
    if not any(wl.extra.get(r.label, {}).get(n) and wl.extra[r.label][n].median is not None
               for r in wl.rows for n in names):
        return None
    fig = _figure(7.0, 1.2 + 0.45 * len(wl.rows))
    ax = fig.subplots()
    ax.set_gid("panel:latency")
    fig.suptitle(f"{wl.tag}: latency percentiles [s], {wl.model}", fontweight="bold",
                 gid="title")
    ys = list(range(len(wl.rows)))[::-1]
    for k, name in enumerate(names):
        vals = [(wl.extra.get(r.label, {}).get(name)) for r in wl.rows]
        for i, (row, s, y) in enumerate(zip(wl.rows, vals, ys, strict=True)):
            if s is None or s.median is None:
                continue
            (bar,) = ax.barh([y + (1 - k) * 0.27], [s.median], height=0.25,
                             color=PALETTE[k], hatch=HATCH if row.marks else None,
                             label=name.removeprefix("al_").removesuffix("_s") if i == 0
                             else None)
            bar.set_gid(f"bar:{name}:{i}")
    ax.set_yticks(ys, [_row_label(r.label, r.marks) for r in wl.rows])
    ax.set_xlabel("latency [s]")
    ax.legend(fontsize=8)
    _legend_note(fig, wl.marks)
    return fig


REPORT_CHARTS = {"bars": bars, "tradeoff": scatter, "loss": loss, "latency": latency}
"""Chart kind -> the function drawing it for one workload (None: nothing to draw)."""
