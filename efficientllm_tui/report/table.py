"""The report's tables as plain text cells (headers and rows), one definition that the HTML
and Markdown writers both render, so the two files always say the same thing."""

from __future__ import annotations

from dataclasses import dataclass

from efficientllm_tui.display import num
from efficientllm_tui.report.record import Report, Row, Stat, Tau, Workload
from profiling import metric_catalog


@dataclass(frozen=True)
class Table:
    """One table: a caption, the header cells and the rows of cells."""

    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    """Footnotes `[1] ...` the cells refer to."""


def marked(text: str, marks: tuple[str, ...]) -> str:
    """`0.25 [S,R]`: a number with the markers of the run it came from."""
    return f"{text} [{','.join(marks)}]" if marks else text


def stat_cell(s: Stat, marks: tuple[str, ...], notes: list[str]) -> str:
    """`median (min–max)`, just the value when there is one repeat, or `n/a [k]` with the
    reason numbered in `notes`."""
    if s.median is None:
        note = s.note or "not stored"
        if note not in notes:
            notes.append(note)
        return f"n/a [{notes.index(note) + 1}]"
    text = num(s.median)
    if s.n > 1:
        text += f" ({num(s.lo)}–{num(s.hi)})"
    return marked(text, marks)


def header(metric: str, unit: str | None = None) -> str:
    """`AL [s]`: the paper's label and the stored unit."""
    known = metric_catalog.info(metric)
    label = known.label if known is not None else metric
    unit = unit or (known.unit if known is not None else None)
    return f"{label} [{unit}]" if unit and unit not in ("fraction", "ratio") else label


def raw_table(wl: Workload) -> Table:
    """Raw metrics: the median and min–max over the repeats, n, and the run seeds."""
    notes: list[str] = []
    heads = ["technique", "n", "seeds"]
    for m in wl.metrics:
        units = [u for r in wl.rows if (u := r.stats[m].unit)]
        heads.append(header(m, units[0] if units else None))
    rows = []
    for r in wl.rows:
        seeds = ", ".join("-" if s is None else str(s) for s in r.seeds)
        rows.append((r.label, str(len(r.run_ids)), seeds,
                     *(stat_cell(r.stats[m], r.marks, notes) for m in wl.metrics)))
    return Table(f"{wl.tag} raw metrics: median (min–max) over repeats", tuple(heads),
                 tuple(rows), tuple(f"[{i}] {n}" for i, n in enumerate(notes, 1)))


def _rank_cell(row: Row, metric: str) -> str:
    if metric not in row.ranks:
        return "-"
    paper = row.paper.get(metric)
    theirs = "-" if paper is None else str(paper.rank) + ("*" if paper.nearest else "")
    return f"{row.scores[metric]:.3f} · {row.ranks[metric]} · {theirs}"


def rank_table(wl: Workload) -> Table:
    """Scores and ranks: the paper's min-max score of the median, our rank, the paper's."""
    ranked = [m for m in wl.metrics if any(m in r.ranks for r in wl.rows)]
    groups = sorted({p.group + (" (nearest size)" if p.nearest else "")
                     for r in wl.rows for p in r.paper.values()})
    notes: tuple[str, ...] = (f"paper group: {', '.join(groups)}" if groups
             else "the paper ranks none of these methods here",)
    if any(p.nearest for r in wl.rows for p in r.paper.values()):
        notes += ("* the model lies outside the paper group's size range (nearest group)",)
    return Table(f"{wl.tag} score in [0.1, 1] · our rank · the paper's rank (ranked within "
                 f"{wl.tag} only)",
                 ("technique", *(header(m) for m in ranked)),
                 tuple((r.label, *(_rank_cell(r, m) for m in ranked)) for r in wl.rows),
                 notes)


def tau_cells(t: Tau) -> tuple[str, str, str, str]:
    """n, tau, p-value and the note of one Kendall tau."""
    return (str(t.n), "-" if t.tau is None else f"{t.tau:+.3f}",
            "-" if t.p_value is None else f"{t.p_value:.3g}", t.note or "")


def tau_table(wl: Workload) -> Table:
    """Kendall tau per metric and for all metrics pooled, our ranks against the paper's."""
    rows = tuple((header(t.metric) if t.metric != "all" else "all metrics", *tau_cells(t))
                 for t in wl.taus)
    return Table(f"{wl.tag} Kendall tau, our ranks vs the paper's",
                 ("metric", "n", "tau", "p-value", "note"), rows)


def summary_table(report: Report) -> Table:
    """One line a workload: its group, model, rows, and tau over all metrics pooled."""
    rows = []
    for sec in report.sections:
        for wl in sec.workloads:
            pooled = next(t for t in wl.taus if t.metric == "all")
            rows.append((wl.tag, sec.title, wl.model, str(len(wl.rows)),
                         ",".join(wl.marks) or "-", *tau_cells(pooled)))
    return Table("Kendall tau per group and workload (all ranked metrics pooled)",
                 ("workload", "group", "model", "rows", "marks", "n", "tau", "p-value", "note"),
                 tuple(rows))


def workload_keys(report: Report) -> Table:
    """The workload key of every tag: what its rows have in common."""
    return Table("workloads (rows are ranked only within one)", ("workload", "key"),
                 tuple((wl.tag, wl.key) for s in report.sections for wl in s.workloads))
