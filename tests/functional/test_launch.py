"""Launch: the matrix explains invalid pairs, the form validates inline (test_queue: the queue)."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable, Input, Static

from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.screens.launch import LaunchScreen

from .scenes import settle

SIZE = (120, 36)


def _spy(app: EfficientLLMApp) -> list[str]:
    started: list[str] = []
    app.enqueue_runs = lambda specs: started.extend(s.run_id for s in specs)  # type: ignore[method-assign]
    return started


def _text(app: EfficientLLMApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def _launch(app: EfficientLLMApp, pilot) -> LaunchScreen:  # type: ignore[no-untyped-def]
    await settle(app, pilot)
    assert isinstance(app.screen, LaunchScreen)
    return app.screen


async def test_invalid_pairs_are_explained_not_selectable(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False, mode="launch")
    async with app.run_test(size=SIZE) as pilot:
        screen = await _launch(app, pilot)
        await pilot.press("down", "down", "down")  # int8 x tiny
        await settle(app, pilot)
        assert "int8 × tiny" in _text(app, "#pair-info")
        assert "not implemented yet" in _text(app, "#pair-info")
        await pilot.press("space")
        assert list(screen.selected) == []
        table = screen.query_one("#matrix", DataTable)
        assert str(table.get_cell("int8", "tiny")) == "✗"
        assert str(table.get_cell("fp32", "tiny")) == "·"


async def test_form_errors_show_inline(new_app: Callable[..., EfficientLLMApp]) -> None:
    app = new_app(seed=False, mode="launch")
    started = _spy(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _launch(app, pilot)
        await pilot.press("s")
        assert "select pairs first" in _text(app, "#form-error")
        await pilot.press("space")
        assert list(screen.selected) == [("fp32", "tiny")]
        screen.query_one("#steps", Input).value = "0"
        await pilot.press("s")
        await pilot.pause()
        assert "steps must be a positive integer" in _text(app, "#form-error")
        screen.query_one("#steps", Input).value = "4"
        screen.query_one("#params", Input).value = "engine"
        await pilot.press("s")
        await pilot.pause()
        assert "params: malformed --set 'engine'" in _text(app, "#form-error")
        screen.query_one("#params", Input).value = ""
        screen.query_one("#seq_len", Input).value = "5000"
        await pilot.pause()
        assert list(screen.selected) == []  # 5000 + 32 > tiny's 4096 positions
        assert started == []


async def test_parameters_the_runner_would_refuse_start_nothing(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False, mode="launch")
    started = _spy(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _launch(app, pilot)
        await pilot.press("space")  # fp32 x tiny
        screen.query_one("#params", Input).value = "engine=warp"
        await pilot.press("s")
        await pilot.pause()
        assert _text(app, "#form-error") == (
            "⚠ fp32 × tiny: unknown engine 'warp' (choose from auto, loop, eager, static, "
            "graph, compile, fused)"
        )
        screen.query_one("#params", Input).value = "bogus_key=1"
        await pilot.press("s")
        await pilot.pause()
        assert _text(app, "#form-error").startswith(
            "⚠ fp32 × tiny: unknown --set parameter(s) for inference: bogus_key (valid: "
        )
        assert started == [] and list(screen.selected) == [("fp32", "tiny")]


async def test_vision_language_models_and_their_tasks_are_offered(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False, mode="launch")
    app.catalog = None  # the shipped catalog, with its vision-language models
    async with app.run_test(size=SIZE) as pilot:
        screen = await _launch(app, pilot)
        table = screen.query_one("#matrix", DataTable)
        ids = [c["id"] for c in screen.models]
        for vlm in ("tiny-vlm", "smolvlm-256m", "smolvlm-2b", "qwen2-vl-2b", "llava-1.5-7b"):
            assert vlm in ids
        for tech in ("fp32", "int8", "lora"):  # inference and PEFT fine-tuning run on VLMs
            assert str(table.get_cell(tech, "tiny-vlm")) == "·"
        assert str(table.get_cell("mha", "tiny-vlm")) == "✗"  # pretraining is text only
        rows = [t["id"] for _, t in screen.rows]
        table.move_cursor(row=rows.index("int8"), column=2 + ids.index("tiny-vlm"))
        await settle(app, pilot)
        assert "int8 × tiny-vlm" in _text(app, "#pair-info")
        assert "task vqa (t: vqa/captioning)" in _text(app, "#pair-info")
        assert screen.check_action("vlm_task", ()) is True
        await pilot.press("space")
        table.move_cursor(row=rows.index("fp32"), column=2 + ids.index("tiny"))
        await settle(app, pilot)
        assert screen.check_action("vlm_task", ()) is False  # a text model has no task
        await pilot.press("space")
        assert list(screen.selected) == [("int8", "tiny-vlm"), ("fp32", "tiny")]
        specs = screen.build_specs()
        assert [s.params.get("task") for s in specs] == ["vqa", None]
        table.move_cursor(row=rows.index("lora"), column=2 + ids.index("tiny-vlm"))
        await settle(app, pilot)
        await pilot.press("t")
        assert "task captioning" in _text(app, "#pair-info")
        assert screen.build_specs()[0].params["task"] == "captioning"
