"""The queue on disk in the app: Launch enqueues, every screen shows it, `x` removes, quitting
drops nothing, and the app waits for the dispatcher to store ended runs (never stores them)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Select, Static

from efficientllm_tui.runs import queue, rundir
from efficientllm_tui.runs.specs import build_spec
from efficientllm_tui.runs.tracker import RunWatcher, WatchUpdate
from efficientllm_tui.tui import app as app_module
from efficientllm_tui.tui.app import EfficientLLMApp
from efficientllm_tui.tui.messages import RunsWatched
from efficientllm_tui.tui.screens.dashboard import DashboardScreen
from efficientllm_tui.tui.screens.launch import LaunchScreen
from profiling import home as homes
from runners.protocol import Event, RunSpec, new_run_id

from .scenes import settle

SIZE = (120, 36)


@pytest.fixture(autouse=True)
def _one_ensure_per_sighting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app makes sure of the dispatcher once per batch it sees, not again in a test."""
    monkeypatch.setattr(app_module, "ENSURE_EVERY_S", 1e9)


def _fake_dispatcher(app: EfficientLLMApp) -> list[list[str]]:
    """Record each call (with the run dirs then on disk) instead of starting a dispatcher."""
    calls: list[list[str]] = []
    runs = homes.runs_dir(app.home)

    def ensure() -> None:
        calls.append(sorted(p.name for p in runs.iterdir()) if runs.is_dir() else [])

    app.ensure_dispatcher = ensure  # type: ignore[method-assign]
    return calls


def _spec(technique: str, now_ns: int) -> RunSpec:
    return build_spec(model="tiny", technique=technique, device="cpu", steps=2, warmup=1,
                      run_id=new_run_id("tiny", technique, now_ns))


def _enqueue_elsewhere(home: Path, technique: str, now_ns: int) -> Path:
    """A run queued by another process (the CLI): only its run dir says so."""
    return queue.enqueue(_spec(technique, now_ns), home, home / "efficientllm.duckdb",
                         now_ns=now_ns)


async def _until(pilot: Pilot, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.05)
    await pilot.pause()


def _queue_rows(app: EfficientLLMApp) -> list[tuple[str, ...]]:
    table = app.screen.query_one("#queue", DataTable)
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def _notes(app: EfficientLLMApp) -> list[str]:
    return [n.message for n in app._notifications]


async def test_launch_enqueues_every_pair_in_selection_order(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False, mode="launch")
    calls = _fake_dispatcher(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, LaunchScreen)
        assert "Nothing queued" in str(screen.query_one("#queue-empty", Static).render())
        screen.query_one("#device", Select).value = "cpu"
        await pilot.press("space", "down", "space")  # fp32 x tiny, then bf16 x tiny
        assert list(screen.selected) == [("fp32", "tiny"), ("bf16", "tiny")]
        await pilot.press("s")
        await _until(pilot, lambda: len(app.queued) == 2)
        assert list(screen.selected) == []
        dirs = sorted(homes.runs_dir(app.home).iterdir())
        assert len(dirs) == 2 and all(queue.is_waiting(d) for d in dirs)
        entries = {d.name: queue.entry(d) for d in dirs}
        assert {e.device_key for e in entries.values() if e} == {"cpu"}
        assert {e.db for e in entries.values() if e} == {str(app.db_path.absolute())}
        # Queue order is selection order (not the matrix's or the ids' order).
        order = [r.run_id for r in queue.snapshot(app.home)]
        assert [r.split("-tiny-")[1] for r in order] == ["fp32", "bf16"]
        # Called once by the launch (both dirs written by then), once by the queue watcher.
        names = [d.name for d in dirs]
        assert len(calls) == 2 and names in calls
        assert _queue_rows(app) == [
            ("cpu", "#1 waiting", "tiny × fp32", "-", order[0]),
            ("cpu", "#2 waiting", "tiny × bf16", "-", order[1]),
        ]
        assert any(m.startswith("queued 2 run(s)") for m in _notes(app))


async def test_queue_shows_runs_queued_elsewhere_and_x_removes_one(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False, mode="launch")
    calls = _fake_dispatcher(app)
    first = _enqueue_elsewhere(app.home, "fp32", 1_900_000_000_000_000_000)
    second = _enqueue_elsewhere(app.home, "fp16", 1_900_000_000_000_000_001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await _until(pilot, lambda: len(_queue_rows(app)) == 2)
        assert calls == [sorted([first.name, second.name])]  # waiting runs at start-up
        assert _queue_rows(app) == [
            ("cpu", "#1 waiting", "tiny × fp32", "-", first.name),
            ("cpu", "#2 waiting", "tiny × fp16", "-", second.name),
        ]
        table = app.screen.query_one("#queue", DataTable)
        await pilot.press("x")  # from the matrix: moves to the queue first
        await pilot.pause()
        assert table.has_focus and table.cursor_row == 0
        assert queue.claimed(first) is None
        await pilot.press("down", "x")
        await _until(pilot, lambda: len(app.queued) == 1)
        claim = queue.claimed(second)
        assert claim is not None and claim.action == "cancel"
        assert queue.claimed(first) is None and queue.is_waiting(first)
        assert [r.run_id for r in app.queued] == [first.name]
        assert _queue_rows(app) == [("cpu", "#1 waiting", "tiny × fp32", "-", first.name)]
        assert f"tiny × fp16 ({second.name}): removed from the queue" in _notes(app)


async def test_quitting_leaves_queued_runs_queued(
    new_app: Callable[..., EfficientLLMApp], capfd: pytest.CaptureFixture[str],
) -> None:
    app = new_app(seed=False, mode="launch")
    _fake_dispatcher(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.screen.query_one("#device", Select).value = "cpu"
        await pilot.press("space", "down", "space", "s")
        await _until(pilot, lambda: len(app.queued) == 2)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running  # no confirmation: nothing is dropped
    dirs = sorted(homes.runs_dir(app.home).iterdir())
    assert len(dirs) == 2
    assert all(queue.is_waiting(d) and queue.claimed(d) is None for d in dirs)
    said = " ".join(capfd.readouterr().err.split())  # printed once the app has closed
    assert said == (
        "efficientllm: 0 running and 2 queued run(s) go on without the app; "
        "`efficientllm queue` lists them."
    )


async def test_dashboard_x_takes_a_queued_run_out_of_the_queue(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False)
    _fake_dispatcher(app)
    run_dir = _enqueue_elsewhere(app.home, "bf16", 1_900_000_000_000_000_000)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, DashboardScreen)
        table = app.screen.query_one("#active", DataTable)
        await _until(pilot, lambda: table.display and table.row_count == 1)
        assert [str(c) for c in table.get_row_at(0)] == [
            "tiny × bf16", "queued #1", "-", "waiting", "-", "cpu"
        ]
        assert table.border_title == "active runs · 1 queued"
        await pilot.press("x")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        assert "Take " + run_dir.name + " out of the queue?" in str(
            app.screen.query_one("#dialog-message", Static).render()
        )
        await pilot.press("y")
        await _until(pilot, lambda: app.queued == [])
        claim = queue.claimed(run_dir)
        assert claim is not None and claim.action == "cancel"
        events, _ = rundir.read_events(run_dir)
        assert [(e.kind, e.get("message")) for e in events] == [("error", "cancelled")]
        await _until(pilot, lambda: not app.screen.query_one("#active", DataTable).display)
        assert "none is queued" in str(app.screen.query_one("#active-empty", Static).render())


def _ended_run(home: Path, status: str) -> Path:
    """A run dir whose runner has ended (result written, pid gone), not yet stored."""
    run_dir = _enqueue_elsewhere(home, "fp32", 1_900_000_000_000_000_000)
    assert queue.claim(run_dir, "start")
    (run_dir / "runner.pid").write_text(json.dumps({"pid": 2**22 + 1}), encoding="utf-8")
    result = {"run_id": run_dir.name, "status": status, "error_type": None,
              "error_message": None if status == "ok" else "CUDA out of memory"}
    rundir.append_event(run_dir, Event(time.time_ns(), "result", result))
    return run_dir


async def test_an_ended_run_is_announced_once_the_dispatcher_stored_it(
    new_app: Callable[..., EfficientLLMApp],
) -> None:
    app = new_app(seed=False)
    calls = _fake_dispatcher(app)
    run_dir = _ended_run(app.home, "oom")
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        version = app.runs_version
        app.post_message(RunsWatched(WatchUpdate(ended=[run_dir.name])))
        await pilot.pause(0.6)
        assert app.runs_version == version  # not stored yet: nothing announced
        assert not any("oom" in m for m in _notes(app))
        assert calls == [[run_dir.name]]  # made sure a dispatcher runs to store it
        rundir.mark_ingested(run_dir, "oom")  # what the dispatcher does once stored
        await _until(pilot, lambda: app.runs_version > version)
        assert f"{run_dir.name}: oom: CUDA out of memory. Details on the Runs screen (3)." \
            in _notes(app)
    # The app stored nothing itself: the database was never even created.
    assert not app.db_path.exists()


async def test_a_run_the_dispatcher_does_not_store_is_reported_after_a_while(
    new_app: Callable[..., EfficientLLMApp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "STORED_WAIT_S", 0.5)
    app = new_app(seed=False)
    _fake_dispatcher(app)
    run_dir = _ended_run(app.home, "ok")
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.post_message(RunsWatched(WatchUpdate(ended=[run_dir.name])))
        await _until(pilot, lambda: any("not stored yet" in m for m in _notes(app)))
        assert not rundir.ingested_final(run_dir) and not app.db_path.exists()


def test_the_watcher_leaves_waiting_runs_alone_until_they_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_dir = _enqueue_elsewhere(home, "fp32", 1_900_000_000_000_000_000)
    old = time.time() - 3600  # queued an hour ago: long past the spawn grace
    os.utime(run_dir, (old, old))
    watcher = RunWatcher(home, scan_every_s=0.0)
    for _ in range(3):
        update = watcher.poll()
        assert (update.new, update.ended) == ([], [])
    # The dispatcher starts it: the watcher picks it up as active.
    assert queue.claim(run_dir, "start")
    (run_dir / "runner.pid").write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
    rundir.append_event(run_dir, Event(time.time_ns(), "started", {"pid": os.getpid()}))
    update = watcher.poll()
    assert [d.name for d, _ in update.new] == [run_dir.name] and update.ended == []
