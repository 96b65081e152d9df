"""The `compare --plot` SVG renderer: valid XML, one bar per run and metric, honest gaps."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from efficientllm_tui import plot
from efficientllm_tui.errors import BadInput

NS = "{http://www.w3.org/2000/svg}"


def _run(run_id: str, technique: str, metrics: dict[str, tuple[Any, str]], *,
         simulated: bool | None = False) -> dict[str, Any]:
    return {"run_id": run_id, "technique": technique, "simulated": simulated,
            "metrics": {n: (v, u, "runner") for n, (v, u) in metrics.items()}}


RUNS = [
    _run("20270115-080000-0001-tiny-fp32", "fp32", {"it": (1234.5, "tok/s"), "al_s": (0.5, "s")}),
    _run("20270115-080100-0002-tiny-int8", "int8", {"it": (2000.0, "tok/s")}),
]


def _panels(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == NS + "svg"
    return {g.get("data-metric", ""): g for g in root.iter(NS + "g") if g.get("class") == "panel"}


def _texts(el: ET.Element, cls: str) -> list[str]:
    return [t.text or "" for t in el.iter(NS + "text") if t.get("class") == cls]


def test_plot_is_valid_xml_with_one_bar_per_run_and_metric() -> None:
    svg = plot.render_svg(RUNS, ["it", "al_s"])
    panels = _panels(svg)
    assert list(panels) == ["it", "al_s"]
    bars = [r for r in panels["it"].iter(NS + "rect") if r.get("class") == "bar"]
    assert [b.get("data-run") for b in bars] == [r["run_id"] for r in RUNS]
    assert float(bars[0].get("width", 0)) < float(bars[1].get("width", 0))
    assert _texts(panels["it"], "value") == ["1234", "2000"]  # display.num, like the tables
    assert _texts(panels["it"], "label") == ["fp32 (01-tiny-fp32)", "int8 (02-tiny-int8)"]
    heading = _texts(panels["it"], "heading")[0]
    assert "tok/s" in heading and "higher is better" in heading
    assert "lower is better" in _texts(panels["al_s"], "heading")[0]
    assert "SIMULATED" not in svg


def test_plot_missing_value_is_na_never_a_zero_bar() -> None:
    runs = [*RUNS, _run("r3", "nan", {"al_s": (float("nan"), "s"), "it": (None, "tok/s")})]
    panel = _panels(plot.render_svg(runs, ["al_s"]))["al_s"]
    bars = [r.get("data-run") for r in panel.iter(NS + "rect") if r.get("class") == "bar"]
    assert bars == [RUNS[0]["run_id"]]
    assert _texts(panel, "na") == ["n/a", "n/a"]
    assert len(_texts(panel, "label")) == 3


def test_plot_escapes_odd_technique_names() -> None:
    odd = 'a<b>&"c\'\x01 ]]> é'
    svg = plot.render_svg([_run('x"<&>', odd, {"it": (1.0, "t<s>")})], ["it"])
    panel = _panels(svg)["it"]  # parses: nothing leaked unescaped
    assert _texts(panel, "label") == ['a<b>&"c\' ]]> é (x"<&>)']
    assert "t<s>" in _texts(panel, "heading")[0]
    assert "<b>" not in svg and "\x01" not in svg


def test_plot_title_says_simulated() -> None:
    runs = [RUNS[0], _run("r-sim", "fp32", {"it": (9.0, "tok/s")}, simulated=True)]
    root = ET.fromstring(plot.render_svg(runs, ["it"]))
    title = root.find(NS + "title")
    assert title is not None and "SIMULATED" in (title.text or "")
    heads = [t.text or "" for t in root.iter(NS + "text") if t.get("class") == "title"]
    assert heads and heads[0].startswith("SIMULATED")
    assert _texts(_panels(plot.render_svg(runs, ["it"]))["it"], "label")[1].endswith("[sim]")


def test_plot_without_metrics_still_renders() -> None:
    svg = plot.render_svg([_run("r", "fp32", {})], plot.choose_metrics([_run("r", "x", {})], None))
    assert _panels(svg) == {}


def test_plot_choose_metrics() -> None:
    assert plot.choose_metrics(RUNS, None) == ["al_s", "it"]
    assert plot.choose_metrics(RUNS, "it, al_s,it") == ["it", "al_s"]
    with pytest.raises(BadInput, match="unknown metric.*nope.*known for these runs: al_s, it"):
        plot.choose_metrics(RUNS, "it,nope")
    with pytest.raises(BadInput, match="no metric given"):
        plot.choose_metrics(RUNS, " , ")


def test_plot_path_and_atomic_write(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"\.svg"):
        plot.check_path(str(tmp_path / "chart.png"))
    path = plot.check_path(str(tmp_path / "chart.SVG"))
    plot.write_svg(path, "<svg/>")
    plot.write_svg(path, "<svg>2</svg>")
    assert path.read_text(encoding="utf-8") == "<svg>2</svg>"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.SVG"]  # no temp file left
    with pytest.raises(BadInput, match="cannot write plot"):
        plot.write_svg(tmp_path / "missing" / "c.svg", "<svg/>")
    with pytest.raises(BadInput, match="directory"):
        plot.write_svg(tmp_path, "<svg/>")
