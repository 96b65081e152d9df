"""events.jsonl: one whole JSON line per event, appended."""

from __future__ import annotations

from pathlib import Path

from runners.protocol import Event, Metric, RunResult
from runners.system.eventlog import EventLog


def test_events_append_as_parseable_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit(Event.phase("load"))
    log.emit(Event.step(step=0, phase="measure", latency_s=0.5, tokens=32, samples=1, ttft_s=0.1))
    log.close()
    log = EventLog(path)  # reopening appends, never truncates
    log.emit(Event.result(RunResult("r1", "ok", (Metric("al_s", 0.5, "s", "runner"),))))
    log.close()
    lines = path.read_text().splitlines()
    events = [Event.from_json(line) for line in lines]
    assert [e.kind for e in events] == ["phase", "step", "result"]
    assert events[1].get("ttft_s") == 0.1
    assert RunResult.from_dict(events[2].fields).metric("al_s") == 0.5
