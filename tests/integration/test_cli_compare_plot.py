"""`efficientllm compare --plot` end to end: the real CLI over runs stored in a temp DB."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store

from .conftest import Cli

NS = "{http://www.w3.org/2000/svg}"
FP32, INT8 = "20270115-080000-0001-tiny-fp32", "20270115-080100-0002-tiny-int8"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "db" / "runs.duckdb"
    store = Store(path, lock_timeout_s=5)
    for run_id, technique, simulated, metrics in (
        (FP32, "fp32", False, {"it": (1200.0, "tok/s"), "al_s": (0.25, "s")}),
        (INT8, "int8<&>", True, {"it": (2400.0, "tok/s")}),
    ):
        store.ingest(RunBundle(
            run={"run_id": run_id, "family": "inference", "technique": technique,
                 "model": "tiny", "group_name": "bit_width", "device": "cpu", "status": "ok",
                 "simulated": simulated},
            metrics=[{"name": n, "value": v, "unit": u, "source": "runner"}
                     for n, (v, u) in metrics.items()]))
    return path


def _compare(cli: Cli, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("compare", FP32, INT8, "--db", str(db), *args)


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""
    return lines[0]


def test_compare_plot_writes_svg_and_still_prints_tables(cli: Cli, db: Path,
                                                         tmp_path: Path) -> None:
    svg = tmp_path / "chart.svg"
    out = _compare(cli, db, "--plot", str(svg))
    assert out.returncode == 0, out.stderr
    assert "raw metrics" in out.stdout and "int8<&> (02-tiny-int8)" in out.stdout
    root = ET.fromstring(svg.read_bytes())
    groups = {g.get("id"): g for g in root.iter(NS + "g") if g.get("id")}
    title = [t.text for t in groups["title"].iter(NS + "text")]
    assert title[0].startswith("SIMULATED GPU DATA")
    assert [k for k in groups if k.startswith("panel:")] == ["panel:al_s", "panel:it"]
    assert [k for k in groups if k.startswith("bar:")] == ["bar:al_s:0", "bar:it:0",
                                                          "bar:it:1:sim"]
    assert [k for k in groups if k.startswith("na:")] == ["na:al_s:1"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_compare_plot_with_json_keeps_the_document(cli: Cli, db: Path, tmp_path: Path) -> None:
    plain = json.loads(_compare(cli, db, "--json").stdout)
    svg = tmp_path / "only-it.svg"
    out = _compare(cli, db, "--json", "--plot", str(svg), "--metrics", "it")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == plain
    root = ET.fromstring(svg.read_bytes())
    assert [g.get("id") for g in root.iter(NS + "g")
            if (g.get("id") or "").startswith("panel:")] == ["panel:it"]


def test_compare_plot_bad_inputs_exit_2(cli: Cli, db: Path, tmp_path: Path) -> None:
    assert ".svg or .png" in _one_line_error(_compare(cli, db, "--plot",
                                                      str(tmp_path / "c.pdf")))
    line = _one_line_error(_compare(cli, db, "--plot", str(tmp_path / "c.svg"),
                                    "--metrics", "it,bogus"))
    assert "bogus" in line and "al_s, it" in line
    assert "cannot write plot" in _one_line_error(
        _compare(cli, db, "--plot", str(tmp_path / "missing" / "c.svg")))
    assert "--plot" in _one_line_error(_compare(cli, db, "--metrics", "it"))
    assert not (tmp_path / "c.pdf").exists() and not (tmp_path / "c.svg").exists()
    keep = tmp_path / "keep.svg"
    keep.write_text("old", encoding="utf-8")
    _one_line_error(_compare(cli, db, "--plot", str(keep), "--metrics", "nope"))
    assert keep.read_text(encoding="utf-8") == "old"  # nothing overwritten
