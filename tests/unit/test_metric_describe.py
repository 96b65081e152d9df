"""The metric catalog describes the names stored by pattern: lm-eval accuracies of any task
and the standard errors of known metrics; other unknown names stay as stored."""

from __future__ import annotations

from profiling import metric_catalog


def test_catalog_names_are_their_own_entries() -> None:
    assert metric_catalog.describe("al_s") is metric_catalog.BY_NAME["al_s"]


def test_accuracies_and_standard_errors_get_labels_and_units() -> None:
    acc = metric_catalog.describe("acc_hellaswag")
    assert acc is not None and (acc.label, acc.unit, acc.paper) == (
        "hellaswag", "fraction", "performance")
    err = metric_catalog.describe("acc_ellm_word_sorting_stderr")
    assert err is not None and (err.label, err.unit) == ("± word sorting", "fraction")
    al = metric_catalog.describe("al_s_stderr")
    assert al is not None and (al.label, al.unit, al.higher_is_better) == ("± AL", "s", None)
    assert metric_catalog.label("acc_hellaswag_stderr") == "± hellaswag"
    assert metric_catalog.label("it_stderr") == "± IT tok/s"


def test_names_it_cannot_describe_stay_raw() -> None:
    for name in ("acc_", "foo_stderr", "vendor_counter", "_stderr"):
        assert metric_catalog.describe(name) is None
        assert metric_catalog.label(name) == name
