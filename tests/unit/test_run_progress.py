"""A run's progress never counts past its total, wherever it is shown (CLI progress lines,
`queue`, the dashboard), and a one-time phase says so and roughly how long it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientllm_tui.commands.launch import Progress
from efficientllm_tui.runs import fold, queue
from efficientllm_tui.runs.specs import build_spec
from efficientllm_tui.runs.tracker import ActiveRun
from runners.protocol import Event


def _events(warmup: int, measured: int, prefill: int) -> list[Event]:
    """What an inference runner emits: warm-up and measured steps, then prefill replays
    and evaluation steps that are not part of the run's progress."""
    out = [Event.phase("load"), Event.phase("convert", source="x.gguf"), Event.phase("warmup")]
    out += [Event.step(step=i, phase="warmup", latency_s=0.1) for i in range(warmup)]
    out.append(Event.phase("measure"))
    out += [Event.step(step=i, phase="measure", latency_s=0.1) for i in range(measured)]
    out.append(Event.phase("prefill", steps=prefill))
    out += [Event.step(step=i, phase="prefill", latency_s=0.01) for i in range(prefill)]
    return out


def test_steps_done_stops_at_the_total_and_restarts_with_the_window() -> None:
    done = 0
    for ev in _events(2, 8, 3):
        done = fold.steps_done(done, ev, warmup=2, total=10)
    assert done == 10
    restarted = fold.steps_done(10, Event.phase("measure", restarted_at=3), warmup=2, total=10)
    assert restarted == 5
    over = fold.steps_done(10, Event.step(step=9, phase="measure", latency_s=0.1),
                           warmup=2, total=10)
    assert over == 10


def test_plain_progress_lines_never_pass_the_total(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = build_spec(model="tiny", technique="fp32", device="cpu", steps=8, warmup=2)
    progress = Progress(spec, enabled=True, home=tmp_path)
    for ev in _events(2, 8, 3) + [Event.step(step=8, phase="measure", latency_s=0.1)]:
        progress(ev)
    lines = capsys.readouterr().err.splitlines()
    counts = [line.split()[1] for line in lines if line.startswith("  step ")]
    assert counts == [f"{i}/10" for i in range(1, 11)] + ["10/10"]
    assert ("  phase convert: one-time step: converting the GGUF weights to a transformers "
            "model (about 45 s for smollm2-135m on 2 CPU cores, longer for larger models; "
            "cached for later runs)") in lines
    assert "  phase load" in lines


def test_active_run_and_queue_count_the_same(tmp_path: Path) -> None:
    spec = build_spec(model="tiny", technique="fp32", device="cpu", steps=8, warmup=2)
    run = ActiveRun.from_dir(tmp_path, spec)
    events = _events(2, 8, 3)
    for ev in events[:2]:
        run.apply(ev)
    assert run.phase_text == "convert (one-time ~1 min)"
    for ev in events[2:]:
        run.apply(ev)
    assert (run.steps_done, run.total_steps, run.progress, run.phase_text) == (
        10, 10, 1.0, "prefill")
    assert queue._steps_done(events, spec) == 10


def test_a_run_on_a_ray_node_is_marked_with_its_host(tmp_path: Path) -> None:
    from efficientllm_tui.runs import rundir

    started = Event.started(pid=1, host="node-7", device="cuda:0", versions={})
    local = ActiveRun(run_id="a", run_dir=tmp_path / "a")
    local.run_dir.mkdir()
    local.apply(started)
    assert local.host is None  # this machine's own run: no mark
    remote = ActiveRun(run_id="b", run_dir=tmp_path / "b")
    remote.run_dir.mkdir()
    (remote.run_dir / rundir.REMOTE_FILE).write_text('{"address": "ray://head:10001"}')
    remote.apply(started)
    assert remote.host == "node-7" and remote.device == "cuda:0"
