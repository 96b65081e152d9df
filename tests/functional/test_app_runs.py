"""The first screen lists stored runs; driven with Pilot, fed by a temp DB."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from efficientllm_tui.app import EfficientLLMApp
from efficientllm_tui.store import RunBundle, Store


def _seed(db: Path) -> None:
    store = Store(db)
    for i, tech in enumerate(("fp32", "bf16")):
        store.ingest(RunBundle(
            run={"run_id": f"run-{i}", "family": "inference", "technique": tech,
                 "model": "tiny", "device": "cpu", "status": "ok", "group_name": "bit_width"},
            samples=[], steps=[], windows=[], events=[],
            metrics=[{"name": "it", "value": 100.0 + i, "unit": "tokens/s", "source": "runner"}]))


async def test_lists_runs_from_db(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    _seed(db)
    app = EfficientLLMApp(db_path=db, home=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.query_one("#runs", DataTable)
        assert table.row_count == 2
        techniques = {table.get_row(k)[3] for k in ("run-0", "run-1")}
        assert techniques == {"fp32", "bf16"}
        assert "2 runs" in str(app.query_one("#empty", Static).render())


async def test_empty_db_says_how_to_start(tmp_path: Path) -> None:
    app = EfficientLLMApp(db_path=tmp_path / "none.duckdb", home=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "efficientllm run -m tiny" in str(app.query_one("#empty", Static).render())
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.press("q")
