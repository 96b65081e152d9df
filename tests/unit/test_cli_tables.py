"""The CLI's tables print their cells as data: brackets in an error or a note are never read
as rich markup (they vanished before: `[Errno 2]`, `[[matrix]]`)."""

from __future__ import annotations

import pytest

from efficientllm_tui.commands import common


def test_bracketed_cells_print_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    common.table(["field", "value"], [["error", "[Errno 2] No such file"],
                                      ["sweep", "[[matrix]] models = [\"tiny\"]"],
                                      ["style", "[bold]not bold[/bold]"]])
    out = capsys.readouterr().out
    for text in ("[Errno 2] No such file", "[[matrix]]", "[bold]not bold[/bold]"):
        assert text in out, out
