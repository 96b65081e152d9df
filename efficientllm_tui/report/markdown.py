"""The report as Markdown (report.md): the same tables as the HTML page, charts linked as
PNG files under charts/."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from efficientllm_tui.report import table
from efficientllm_tui.report.record import MARKS, Report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(t: table.Table) -> list[str]:
    """One table: caption in bold, the pipe table, its footnotes."""
    out = [f"**{_cell(t.caption)}**", "", "| " + " | ".join(map(_cell, t.headers)) + " |",
           "|" + "---|" * len(t.headers)]
    out += ["| " + " | ".join(map(_cell, row)) + " |" for row in t.rows]
    out += [""] + [f"{_cell(n)}  " for n in t.notes] if t.notes else []
    return [*out, ""]


def render(report: Report, charts: Mapping[str, Sequence[str]]) -> str:
    """The whole Markdown document; `charts` maps a workload tag to its chart files (PNG
    paths relative to the report folder)."""
    out = ["# EfficientLLM study report", ""]
    out += [f"- selection: {'study ' + report.study if report.study else 'run ids'}; "
            f"{report.run_count} run(s) in the tables",
            f"- runs from {report.started or '?'} to {report.ended or '?'} on "
            f"{', '.join(report.devices) or '?'}",
            "- markers: " + "; ".join(f"[{k}] {v}" for k, v in MARKS.items()), ""]
    for t in (table.summary_table(report), table.workload_keys(report)):
        out += render_table(t)
    for sec in report.sections:
        out += [f"## {sec.title}", ""]
        for wl in sec.workloads:
            out += [f"### {wl.tag}: {wl.model}", "", f"workload: `{wl.key}`", ""]
            if wl.marks:
                out += ["marked: " + "; ".join(f"[{m}] {MARKS[m]}" for m in wl.marks), ""]
            for t in (table.raw_table(wl), table.rank_table(wl), table.tau_table(wl)):
                out += render_table(t)
            out += [f"![{wl.tag} {p}]({p})" for p in charts.get(wl.tag, ())]
            out += [""]
    if report.skipped:
        out += ["## Runs left out", ""]
        out += [f"- {s.run_id}: {s.status}: {s.reason}" for s in report.skipped] + [""]
    return "\n".join(out)
