"""`efficientllm report`: numbers checked against the stored rows (median, spread, min-max
score, ranks, Kendall tau computed here independently), markers, files, and bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from efficientllm_tui import cli
from efficientllm_tui.report.build import build_report
from efficientllm_tui.report.record import Report, Workload
from efficientllm_tui.report.write import write_report
from efficientllm_tui.store.db import Store

from .report_rows import INFER, OTHER, PRETRAIN, SIMULATED, STUDY, build_db

RANKS = json.loads((Path(__file__).parents[2] / "data" / "efficientllm_ranks.json").read_text())
PAPER_NAMES = {"gqa": "GQA", "mqa": "MQA", "mla": "MLA", "bf16": "bfloat16",
               "fp16": "float16", "int4": "int4"}
PAPER_COLUMN = {"amu": "AMU", "al_s": "AL", "tt": "TT", "aec_w": "AEC", "loss": "performance",
                "it": "IT", "mcr": "MCR"}
LOWER_BETTER = {"amu", "al_s", "aec_w", "loss"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path / "home"))
    return build_db(tmp_path / "db" / "runs.duckdb")


@pytest.fixture
def report(store: Store) -> Report:
    return build_report(store, study="study-2027")  # a unique prefix


def _workloads(report: Report) -> dict[str, Workload]:
    return {f"{wl.family}/{wl.group}/{'sim' if 'S' in wl.marks else 'real'}": wl
            for s in report.sections for wl in s.workloads}


def _paper(family: str, group: str, technique: str, metric: str) -> int:
    (row,) = [r for r in RANKS["rows"] if r["family"] == family and r["group"] == group
              and r["method"] == PAPER_NAMES[technique]]
    return int(row["ranks"][PAPER_COLUMN[metric]])


def _expected(rows: list[tuple[str, str, int, dict[str, float]]], metric: str
              ) -> dict[str, tuple[float, float, float, int, float, int]]:
    """technique -> (median, min, max, n, score, rank) straight from the stored values."""
    by: dict[str, list[float]] = {}
    for _, tech, _, m in rows:
        by.setdefault(tech, []).append(m[metric])
    med = {t: statistics.median(v) for t, v in by.items()}
    lo, hi = min(med.values()), max(med.values())
    score = {t: 1.0 if hi == lo else 0.1 + 0.9 * ((hi - v) if metric in LOWER_BETTER
                                                   else (v - lo)) / (hi - lo)
             for t, v in med.items()}
    rank = {t: 1 + sum(s2 > s for s2 in score.values()) for t, s in score.items()}
    return {t: (med[t], min(by[t]), max(by[t]), len(by[t]), score[t], rank[t]) for t in by}


def test_report_groups_by_workload_and_leaves_out_what_is_not_the_study(report: Report) -> None:
    wls = _workloads(report)
    assert list(wls) == ["inference/bit_width/real", "inference/bit_width/sim",
                         "pretraining/attention/real"]
    assert [wl.tag for wl in wls.values()] == ["W1", "W2", "W3"]
    assert len({wl.key for wl in wls.values()}) == 3  # real and simulated never ranked together
    assert report.study == STUDY
    assert report.run_count == len(PRETRAIN) + len(INFER) + 1
    assert [(s.run_id, s.status, s.reason) for s in report.skipped] == [
        ("i-fp32-failed", "oom", "out of memory")]
    ids = {r for wl in wls.values() for row in wl.rows for r in row.run_ids}
    assert "o-bf16-0" not in ids and "i-fp32-failed" not in ids  # another sweep; failed
    assert report.devices == ("cpu", "cpu (simulated)")
    assert (report.started, report.ended) == ("2027-01-15T08:00:00+00:00",
                                              "2027-01-15T09:02:00+00:00")


@pytest.mark.parametrize(("name", "rows", "family", "group", "metrics"), [
    ("pretraining/attention/real", PRETRAIN, "pretraining", "attention",
     ("amu", "al_s", "tt", "aec_w", "loss")),
    ("inference/bit_width/real", INFER, "quantization", "1.5B-3.8B",
     ("amu", "al_s", "it", "mcr")),
])
def test_report_numbers_match_the_stored_rows(report: Report, name: str, rows: list,
                                              family: str, group: str,
                                              metrics: tuple[str, ...]) -> None:
    wl = _workloads(report)[name]
    assert wl.metrics == metrics
    assert {r.technique: r.run_ids for r in wl.rows} == {
        t: tuple(sorted(rid for rid, tech, _, _ in rows if tech == t))
        for t in {tech for _, tech, _, _ in rows}}
    pooled_ours, pooled_paper = [], []
    for m in metrics:
        want = _expected(rows, m)
        got = {r.technique: (r.stats[m].median, r.stats[m].lo, r.stats[m].hi, r.stats[m].n,
                             r.scores[m], r.ranks[m]) for r in wl.rows}
        assert got == pytest.approx(want)
        paper = {r.technique: r.paper[m].rank for r in wl.rows}
        assert paper == {t: _paper(family, group, t, m) for t in want}
        ours = [want[t][5] for t in sorted(want)]
        theirs = [paper[t] for t in sorted(want)]
        tau = next(t for t in wl.taus if t.metric == m)
        expected = kendalltau(ours, theirs)
        assert (tau.n, tau.tau, tau.p_value) == pytest.approx(
            (3, expected.statistic, expected.pvalue))
        pooled_ours += ours
        pooled_paper += theirs
    pooled = next(t for t in wl.taus if t.metric == "all")
    expected = kendalltau(pooled_ours, pooled_paper)
    assert (pooled.n, pooled.tau, pooled.p_value) == pytest.approx(
        (len(pooled_ours), expected.statistic, expected.pvalue))


def test_report_marks_and_small_n_notes(report: Report) -> None:
    wls = _workloads(report)
    # trained from a random init by design: its loss and perplexity are the measurement
    assert wls["pretraining/attention/real"].marks == ()
    assert wls["inference/bit_width/real"].marks == ()
    sim = wls["inference/bit_width/sim"]
    assert sim.marks == ("S",)
    (row,) = sim.rows
    assert row.ranks == {m: 1 for m in ("amu", "al_s", "it", "aec_w")}
    assert row.stats["it"].median == SIMULATED[3]["it"]
    assert {t.metric: t.note for t in sim.taus} == {
        m: "n = 0 < 3: too few rows the paper ranks"
        for m in ("amu", "al_s", "it", "aec_w", "all")}  # the paper has no int8


def test_report_files_tables_and_charts(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    paths = write_report(report, out)
    charts = ["w1-bars", "w1-latency", "w2-bars", "w2-tradeoff", "w3-bars", "w3-tradeoff",
              "w3-loss"]
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "index.html", "report.md",
        *(f"charts/{c}.{s}" for c in charts for s in ("svg", "png"))]
    html = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert html.count("<svg") == len(charts)  # inlined, self-contained
    assert "<script" not in html and "<link" not in html and "src=" not in html
    for text in (html, md):
        # gqa al_s: median (min–max), unmarked (pretraining from scratch)
        assert "0.22 (0.2–0.26) |" in text or "0.22 (0.2–0.26)<" in text
        assert "150 [S]" in text  # the simulated run's it
        assert "[S] simulated GPU" in text and "[R] random weights" in text
        assert report.sections[0].workloads[0].key in text
        assert "i-fp32-failed: oom: out of memory" in text
    assert "| gqa | 3 | 0, 1, 2 |" in md
    assert "| mqa | 2 | 0, 1 | 0.21 (0.2–0.22) | 0.12 (0.1–0.14) |" in md
    # score · our rank · the paper's, for amu, al_s, tt, aec_w, loss
    assert ("| mqa | 1.000 · 1 · 1 | 1.000 · 1 · 1 | 1.000 · 1 · 1 | 0.100 · 3 · 3 "
            "| 0.100 · 3 · 4 |") in md
    svg = (out / "charts" / "w3-loss.svg").read_bytes()
    assert svg.count(b'id="curve:') == len(PRETRAIN)
    assert b'id="bar:amu:0:marked"' in (out / "charts" / "w2-bars.svg").read_bytes()  # simulated
    assert b':marked"' not in (out / "charts" / "w3-bars.svg").read_bytes()  # from scratch
    (out / "charts" / "w9-bars.png").write_bytes(b"an earlier report's workload 9")
    (out / "charts" / "mine.png").write_bytes(b"not a report's")
    write_report(report, out)  # the same data draw the same bytes
    assert (out / "charts" / "w3-loss.svg").read_bytes() == svg
    # a chart of an earlier report that neither page shows is gone; other files stay
    assert not (out / "charts" / "w9-bars.png").exists()
    assert (out / "charts" / "mine.png").read_bytes() == b"not a report's"


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err
    return captured.err


def test_report_cli_writes_and_refuses_bad_input(store: Store, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = str(store.path)
    out = tmp_path / "r"
    assert cli.main(["report", "--study", STUDY, "-o", str(out), "--db", db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"][:2] == [str(out / "index.html"), str(out / "report.md")]
    assert doc["report"]["run_count"] == 11
    assert cli.main(["report", "i-bf16", "i-fp16-0", "i-int4-0", "-o", str(tmp_path / "ids"),
                     "--db", db]) != 0  # i-bf16 is an ambiguous prefix
    capsys.readouterr()
    assert cli.main(["report", "i-bf16-0", "i-fp16", "-o", str(tmp_path / "ids"),
                     "--db", db]) == 0
    assert "2 run(s) in 1 workload(s)" in capsys.readouterr().out
    assert "no runs selected" in _fails(capsys, "report", "-o", str(out), "--db", db)
    assert "no study 'nope'" in _fails(capsys, "report", "--study", "nope", "-o", str(out),
                                       "--db", db)
    assert "ambiguous" in _fails(capsys, "report", "--study", "s", "-o", str(out), "--db", db)
    assert "not both" in _fails(capsys, "report", "--study", STUDY, "i-bf16-0", "-o",
                                str(out), "--db", db)
    assert "none of the 1 selected run(s) finished ok (oom)" in _fails(
        capsys, "report", "i-fp32-failed", "-o", str(out), "--db", db)
    afile = tmp_path / "a-file"
    afile.write_text("keep", encoding="utf-8")
    assert "is a file" in _fails(capsys, "report", "--study", STUDY, "-o", str(afile),
                                 "--db", db)
    assert afile.read_text(encoding="utf-8") == "keep"
    assert OTHER.startswith("s")  # the prefix above names two studies
    empty = str(tmp_path / "empty.duckdb")
    assert "no database" in _fails(capsys, "report", "--study", "x", "-o", str(out),
                                   "--db", empty)
