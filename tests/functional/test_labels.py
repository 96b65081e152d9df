"""Labels users read: Detail's metric rows from the metric catalog (each unit said once, no
stored ids among labels), and a human name for every command in the palette."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from textual.widgets import DataTable

from efficientllm_tui.store.bundle import RunBundle
from efficientllm_tui.store.db import Store
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.detail import RunDetailScreen

from .scenes import run_ids, settle

RUN = "20270115-090000-00c1-smollm2-135m-lora"
METRICS = (  # name, value, stored unit
    ("aec_w", 61.5, "W"),
    ("al_s", 1.536, "s"),
    ("al_p50_s", 1.5, "s"),
    ("st", 2.5e-7, "samples/param/s"),
    ("amu", 0.25, "fraction"),
    ("amu_gib", 4.0, "GiB"),
    ("quality", 0.5, "fraction"),
    ("acc_ellm_word_sorting", 0.4, "fraction"),
    ("acc_ellm_word_sorting_stderr", 0.05, "fraction"),
    ("acc_hellaswag", 0.3, "fraction"),
    ("total_params", 134515008, "params"),
    ("vendor_counter", 7.0, "count"),
)


def _store_run(db: object) -> None:
    Store(db).ingest(RunBundle(  # type: ignore[arg-type]
        run={"run_id": RUN, "family": "finetuning", "technique": "lora",
             "model": "smollm2-135m", "device": "cpu", "status": "ok", "group_name": "peft",
             "started_at": datetime(2027, 1, 15, 9, tzinfo=UTC),
             "ended_at": datetime(2027, 1, 15, 9, 5, tzinfo=UTC)},
        metrics=[{"name": n, "value": v, "unit": u, "source": "runner"}
                 for n, v, u in METRICS]))


async def test_detail_labels_and_units_come_from_the_catalog(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="runs")
    _store_run(app.db_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        await app.push_screen(RunDetailScreen(RUN))
        await settle(app, pilot)
        table = app.screen.query_one("#detail-metrics", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)[:3]] for i in range(table.row_count)]
        # The family's headline metrics first (ST, not IT or TT), then catalog order; an id
        # the catalog cannot describe comes last, as stored.
        assert rows == [
            ["AMU", "0.25", "fraction"],
            ["AL", "1.536", "s"],
            ["ST", "2.50e-07", "smp/param/s"],
            ["AEC", "61.5", "W"],
            ["quality", "0.5", "fraction"],
            ["AMU", "4", "GiB"],
            ["AL p50", "1.5", "s"],
            ["params", "1.35e+08", ""],
            ["word sorting", "0.4", "fraction"],
            ["± word sorting", "0.05", "fraction"],
            ["hellaswag", "0.3", "fraction"],
            ["vendor_counter", "7", "count"],
        ]
        for label, _, unit in rows:  # never a unit twice, never a stored id among labels
            assert not (unit and label.endswith(" " + unit))
            assert "_" not in label or label == "vendor_counter"


async def test_palette_commands_have_human_names(
    new_app: Callable[..., EfficientLLMApp]
) -> None:
    app = new_app(mode="runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert commands["Mark"] == "Runs · key space"
        assert commands["Go to Study"] == "Switch to the Study screen"
        await app.push_screen(RunDetailScreen(run_ids()[0]))
        await settle(app, pilot)
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert commands["Loss/latency"] == "Run detail · key l"
        for mode in ("dashboard", "compare", "study"):
            await pilot.press("f" + str(1 + ["dashboard", "launch", "runs", "compare", "sql",
                                              "study"].index(mode)))
            await settle(app, pilot)
            assert app.current_mode == mode
            for c in app.get_system_commands(app.screen):
                assert "Screen" not in c.help and "key" not in c.title, (c.title, c.help)
