"""The report as one self-contained HTML page (index.html): CSS inline, charts inlined as
SVG, no script and no network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from efficientllm_tui.report import table
from efficientllm_tui.report.record import MARKS, Report

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:left;font-size:13px}th{background:#f3f3f3}caption{text-align:left;
font-weight:bold;padding:4px 0}code{font-size:12px}.marks{color:#c62828}.note{color:#555;
font-size:12px}figure{margin:1em 0}svg{max-width:100%;height:auto}"""


def render_table(t: table.Table) -> str:
    """One <table> with its caption and footnotes."""
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                   for r in t.rows)
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in t.notes)
    return (f"<table><caption>{escape(t.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>{notes}")


def render(report: Report, svgs: Mapping[str, Sequence[str]]) -> str:
    """The whole page; `svgs` maps a workload tag to its charts' SVG text."""
    sel = f"study {report.study}" if report.study else "run ids"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>EfficientLLM study report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>EfficientLLM study report</h1>",
             f"<p>selection: {escape(sel)}; {report.run_count} run(s) in the tables; runs "
             f"from {escape(report.started or '?')} to {escape(report.ended or '?')} on "
             f"{escape(', '.join(report.devices) or '?')}</p>",
             '<p class="marks">markers: ' + "; ".join(
                 f"[{k}] {escape(v)}" for k, v in MARKS.items()) + "</p>",
             render_table(table.summary_table(report)),
             render_table(table.workload_keys(report))]
    for sec in report.sections:
        parts.append(f"<h2>{escape(sec.title)}</h2>")
        for wl in sec.workloads:
            parts.append(f'<h3 id="{wl.tag}">{wl.tag}: {escape(wl.model)}</h3>')
            parts.append(f"<p>workload: <code>{escape(wl.key)}</code></p>")
            if wl.marks:
                parts.append('<p class="marks">marked: ' + "; ".join(
                    f"[{m}] {escape(MARKS[m])}" for m in wl.marks) + "</p>")
            for t in (table.raw_table(wl), table.rank_table(wl), table.tau_table(wl)):
                parts.append(render_table(t))
            parts += [f"<figure>{svg}</figure>" for svg in svgs.get(wl.tag, ())]
    if report.skipped:
        parts.append("<h2>Runs left out</h2><ul>" + "".join(
            f"<li>{escape(s.run_id)}: {escape(str(s.status))}: {escape(s.reason)}</li>"
            for s in report.skipped) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
