"""The one metric catalog: every consumer reads it, and docs/metrics.md carries it verbatim."""

from __future__ import annotations

from pathlib import Path

from efficientllm_tui.display import metric_label
from efficientllm_tui.paper import paper_rank
from efficientllm_tui.store.schema import LIST_METRIC_COLUMNS, METRIC_DIRECTIONS, RUN_METRIC_COLUMNS
from profiling import metric_catalog as mc

ROOT = Path(__file__).resolve().parents[2]


def test_docs_carry_the_generated_table() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    start, end = text.index(mc.CATALOG_BEGIN), text.index(mc.CATALOG_END) + len(mc.CATALOG_END)
    assert text[start:end] == mc.markdown_table(), "run `python -m profiling.metric_catalog`"


def test_names_are_unique_and_units_have_one_spelling() -> None:
    names = [m.name for m in mc.CATALOG]
    assert len(names) == len(set(names))
    units = {m.unit for m in mc.CATALOG}
    assert units == {"fraction", "GiB", "s", "tokens/param/s", "samples/param/s", "tokens/s",
                     "samples/s", "W", "J", "J/token", "ratio", "ppl", "nats/token", "params",
                     "bytes", "tokens", "images/s", "BLEU"}


def test_the_store_and_the_leaderboard_read_the_catalog() -> None:
    assert METRIC_DIRECTIONS == {"amu": False, "pcu": True, "al_s": False, "tt": True,
                                 "st": True, "it": True, "aec_w": False, "mcr": True,
                                 "eval_ppl": False, "loss": False, "quality": True}
    assert RUN_METRIC_COLUMNS[:11] == ("amu", "pcu", "al_s", "tt", "st", "it", "aec_w", "mcr",
                                       "eval_ppl", "quality", "loss")
    assert set(LIST_METRIC_COLUMNS) <= set(RUN_METRIC_COLUMNS)


def test_headline_order_per_family() -> None:
    assert mc.headline("inference") == ("amu", "pcu", "al_s", "it", "aec_w", "mcr", "eval_ppl",
                                        "quality", "loss")
    assert mc.headline("finetuning")[:5] == ("amu", "pcu", "al_s", "st", "aec_w")
    assert mc.headline("pretraining")[3] == "tt"
    assert mc.ordered({"mfu", "zzz_unknown", "it", "amu"}, "inference") == [
        "amu", "it", "mfu", "zzz_unknown"]


def test_labels_and_paper_columns_come_from_it() -> None:
    assert metric_label("aec_w") == "AEC W"
    assert metric_label("amu") == "AMU"
    assert metric_label("it") == "IT tok/s"
    assert metric_label("not_a_metric") == "not_a_metric"
    assert paper_rank("inference", "bit_width", "int8", "qwen2.5-0.5b", "mfu") is None
