"""The `compare --plot` chart (matplotlib): valid SVG, one bar per run and metric, honest gaps,
simulated runs marked, the same bytes for the same data, PNG too."""

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


def _chart(tmp_path: Path, runs: list[dict[str, Any]], metrics: list[str],
           name: str = "c.svg") -> ET.Element:
    path = tmp_path / name
    plot.write_chart(path, runs, metrics)
    root = ET.fromstring(path.read_bytes())
    assert root.tag == NS + "svg"
    return root


def ids(root: ET.Element, prefix: str) -> dict[str, ET.Element]:
    """Elements whose gid starts with `prefix` (`panel:`, `bar:it:`), in document order."""
    return {g.get("id", ""): g for g in root.iter(NS + "g")
            if g.get("id", "").startswith(prefix)}


def texts(el: ET.Element) -> list[str]:
    return [(t.text or "").strip() for t in el.iter(NS + "text")]


def test_plot_is_valid_svg_with_one_bar_per_run_and_metric(tmp_path: Path) -> None:
    root = _chart(tmp_path, RUNS, ["it", "al_s"])
    assert list(ids(root, "panel:")) == ["panel:it", "panel:al_s"]
    assert list(ids(root, "bar:it:")) == ["bar:it:0", "bar:it:1"]
    assert list(ids(root, "bar:al_s:")) == ["bar:al_s:0"]
    values = ids(root, "value:it:")
    assert [texts(v) for v in values.values()] == [["1234"], ["2000"]]  # display.num
    panel = ids(root, "panel:it")["panel:it"]
    assert "fp32 (01-tiny-fp32)" in texts(panel) and "int8 (02-tiny-int8)" in texts(panel)
    assert "it (IT) [tok/s], higher is better" in texts(panel)
    assert "al_s (AL) [s], lower is better" in texts(ids(root, "panel:al_s")["panel:al_s"])
    svg = (tmp_path / "c.svg").read_text(encoding="utf-8")
    assert "SIMULATED" not in svg and "<pattern" not in svg  # nothing hatched


def test_plot_missing_value_is_na_never_a_zero_bar(tmp_path: Path) -> None:
    runs = [*RUNS, _run("r3", "nan", {"al_s": (float("nan"), "s"), "it": (None, "tok/s")})]
    root = _chart(tmp_path, runs, ["al_s"])
    assert list(ids(root, "bar:al_s:")) == ["bar:al_s:0"]
    assert {k: texts(v) for k, v in ids(root, "na:").items()} == {
        "na:al_s:1": ["n/a"], "na:al_s:2": ["n/a"]}


def test_plot_escapes_odd_technique_names(tmp_path: Path) -> None:
    odd = 'a<b>&"c\'\x01 ]]> $x$ é'
    root = _chart(tmp_path, [_run('x"<&>', odd, {"it": (1.0, "t<s>")})], ["it"])
    panel = ids(root, "panel:it")["panel:it"]  # parses: nothing leaked unescaped
    assert 'a<b>&"c\' ]]> $x$ é (x"<&>)' in texts(panel)
    assert "it (IT) [t<s>], higher is better" in texts(panel)


def test_plot_title_says_simulated_and_hatches_its_bars(tmp_path: Path) -> None:
    runs = [RUNS[0], _run("r-sim", "fp32", {"it": (9.0, "tok/s")}, simulated=True)]
    root = _chart(tmp_path, runs, ["it"])
    title = texts(ids(root, "title")["title"])
    assert title[0] == "SIMULATED GPU DATA - efficientllm compare: 2 run(s), raw metrics"
    assert list(ids(root, "bar:it:")) == ["bar:it:0", "bar:it:1:sim"]
    hatched = [p for p in ids(root, "bar:it:1:sim")["bar:it:1:sim"].iter(NS + "path")
               if "url(#" in (p.get("style") or "")]
    assert len(hatched) == 1 and root.find(f".//{NS}pattern") is not None
    assert "fp32 (r-sim) [sim]" in texts(ids(root, "panel:it")["panel:it"])


def test_plot_without_metrics_still_renders(tmp_path: Path) -> None:
    runs = [_run("r", "fp32", {})]
    root = _chart(tmp_path, runs, plot.choose_metrics(runs, None))
    assert ids(root, "panel:") == {}
    assert texts(ids(root, "empty")["empty"]) == ["no metrics stored for these runs"]


def test_plot_is_deterministic_and_writes_png(tmp_path: Path) -> None:
    plot.write_chart(tmp_path / "a.svg", RUNS, ["it"])
    first = (tmp_path / "a.svg").read_bytes()
    plot.write_chart(tmp_path / "a.svg", RUNS, ["it"])
    assert (tmp_path / "a.svg").read_bytes() == first  # fixed hash salt, no date
    assert b"<dc:date>" not in first
    plot.write_chart(tmp_path / "a.png", RUNS, ["it"])
    png = (tmp_path / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    plot.write_chart(tmp_path / "a.png", RUNS, ["it"])
    assert (tmp_path / "a.png").read_bytes() == png


def test_plot_choose_metrics() -> None:
    assert plot.choose_metrics(RUNS, None) == ["al_s", "it"]
    assert plot.choose_metrics(RUNS, "it, al_s,it") == ["it", "al_s"]
    with pytest.raises(BadInput, match="unknown metric.*nope.*known for these runs: al_s, it"):
        plot.choose_metrics(RUNS, "it,nope")
    with pytest.raises(BadInput, match="no metric given"):
        plot.choose_metrics(RUNS, " , ")


def test_plot_path_and_atomic_write(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"\.svg or \.png"):
        plot.check_path(str(tmp_path / "chart.pdf"))
    assert plot.check_path(str(tmp_path / "chart.PNG")).name == "chart.PNG"
    path = plot.check_path(str(tmp_path / "chart.SVG"))
    plot.write_chart(path, RUNS, ["it"])
    plot.write_chart(path, RUNS, ["al_s"])
    assert list(ids(ET.fromstring(path.read_bytes()), "panel:")) == ["panel:al_s"]
    assert [p.name for p in tmp_path.iterdir()] == ["chart.SVG"]  # no temp file left
    with pytest.raises(BadInput, match="cannot write plot"):
        plot.write_chart(tmp_path / "missing" / "c.svg", RUNS, ["it"])
    with pytest.raises(BadInput, match="directory"):
        plot.write_chart(tmp_path, RUNS, ["it"])
