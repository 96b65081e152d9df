"""Simulated runs are marked wherever the CLI shows metrics: `runs`, `compare` (tables, JSON,
the SVG chart), `export` and the result table of `run` (DESIGN.md section 4)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from efficientllm_tui import cli
from efficientllm_tui.commands import common
from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from tests.unit import store_rows
from tests.unit.store_rows import make_bundle, make_metric

store = store_rows.store  # a fixture, used by name

REAL, SIM = "20270115-080000-0001-tiny-fp32", "20270115-080100-0002-tiny-fp32"
NS = "{http://www.w3.org/2000/svg}"
FOOTNOTE = ("(SIMULATED GPU): AMU, PCU and energy of these runs come from a simulated GPU "
            "(`--simulate-gpu`), not from hardware")


def _bundle(run_id: str, simulated: bool, started_min: int) -> RunBundle:
    amu_source = "simulated" if simulated else "psutil"
    b = make_bundle(run_id, samples=[])
    b.run.update(device="cpu", simulated=simulated,
                 started_at=f"2027-01-15T08:0{started_min}:00+00:00")
    b.metrics[:] = [make_metric("amu", 0.5 if simulated else 0.25, "fraction", amu_source),
                    make_metric("pcu", 0.9 if simulated else 0.4, "fraction", amu_source),
                    make_metric("it", 40.0 if simulated else 42.0, "tok/s")]
    return b


@pytest.fixture
def db(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real run and a simulated one, both on the CPU; the data dir is private."""
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path / "home"))
    store.ingest(_bundle(REAL, False, 0))
    store.ingest(_bundle(SIM, True, 1))
    return store.path


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def _line(out: str, run_id: str) -> str:
    lines = [ln for ln in out.splitlines() if run_id in ln]
    assert len(lines) == 1, out
    return lines[0]


def test_runs_table_marks_simulated_rows_and_explains(db: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = _main(capsys, "runs", "--db", str(db))
    assert "cpu (SIMULATED GPU)" in _line(out, SIM)
    assert "SIMULATED" not in _line(out, REAL) and " cpu " in _line(out, REAL)
    assert out.strip().splitlines()[-1] == FOOTNOTE


def test_runs_table_without_simulated_runs_has_no_footnote(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EFFICIENTLLM_HOME", str(tmp_path / "home"))
    store.ingest(_bundle(REAL, False, 0))
    assert "SIMULATED" not in _main(capsys, "runs", "--db", str(store.path))


def test_runs_json_says_simulated_and_each_metric_source(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = {d["run_id"]: d for d in json.loads(_main(capsys, "runs", "--json", "--db", str(db)))}
    assert docs[SIM]["simulated"] is True and docs[REAL]["simulated"] is False
    assert docs[SIM]["sources"] == {"amu": "simulated", "it": "runner", "pcu": "simulated"}
    assert docs[REAL]["sources"] == {"amu": "psutil", "it": "runner", "pcu": "psutil"}
    assert docs[SIM]["amu"] == 0.5 and docs[REAL]["amu"] == 0.25


def test_compare_tables_mark_the_simulated_run(db: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = _main(capsys, "compare", REAL, SIM, "--db", str(db))
    header = next(ln for ln in out.splitlines() if "metric" in ln and "fp32" in ln)
    assert header.count("(SIMULATED GPU)") == 1
    assert header.index("(SIMULATED GPU)") > header.index(SIM[-12:]) > header.index(REAL[-12:])
    board = [ln for ln in out.splitlines() if ln.startswith("│ 2027")]
    # amu, it, pcu ranked per run: each run is its own group (real and simulated never mix)
    assert len(board) == 6
    assert all(ln.rstrip(" │").endswith("SIMULATED") for ln in board if SIM in ln)
    assert all(ln.rstrip(" │").endswith("measured") for ln in board if REAL in ln)
    assert out.strip().splitlines()[-1] == FOOTNOTE


def test_compare_json_and_plot_mark_the_simulated_run(db: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "chart.svg"
    doc = json.loads(_main(capsys, "compare", REAL, SIM, "--json", "--plot", str(svg),
                           "--db", str(db)))
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert runs[SIM]["simulated"] is True and runs[REAL]["simulated"] is False
    assert runs[SIM]["sources"] == {"amu": "simulated", "it": "runner", "pcu": "simulated"}
    assert {b["run_id"]: b["simulated"] for b in doc["leaderboard"]} == {REAL: False, SIM: True}
    root = ET.fromstring(svg.read_bytes())
    bars = [g.get("id") for g in root.iter(NS + "g") if (g.get("id") or "").startswith("bar:")]
    assert bars == [f"bar:{m}:{i}" for m in ("amu", "pcu", "it") for i in ("0", "1:sim")]
    hatched = [g.get("id") for g in root.iter(NS + "g") if (g.get("id") or "").startswith("bar:")
               and any("url(#" in (p.get("style") or "") for p in g.iter(NS + "path"))]
    assert hatched == [b for b in bars if b.endswith(":sim")]
    labels = [t.text or "" for t in root.iter(NS + "text")]
    assert sum(lb.endswith(f"({SIM[-12:]}) [sim]") for lb in labels) == 3  # one a panel
    assert sum(lb.endswith(f"({REAL[-12:]})") for lb in labels) == 3


def test_export_keeps_the_simulated_column(db: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs.csv"
    _main(capsys, "export", "--format", "csv", "-o", str(out), "--db", str(db))
    with out.open(newline="") as f:
        rows = {r["run_id"]: r["simulated"] for r in csv.DictReader(f)}
    assert rows == {REAL: "false", SIM: "true"}


def test_run_result_table_says_simulated(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Store(db).get_run(SIM)
    assert run is not None
    common.print_run(common.run_doc(run, "ok"))
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("status ok  [SIMULATED GPU DATA]")
    assert "simulated" in _line(out, "amu ") and "simulated" in _line(out, "pcu ")
