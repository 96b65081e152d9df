"""Reattaching replays a run's history from the spool, then the daemon's live stream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from efficientllm_tui.live import feed
from profiling.daemon import client
from profiling.sample import Sample


def _sample(t_ns: int) -> Sample:
    return Sample(t_ns=t_ns, host="h", device="gpu0", source="simulated", power_w=100.0)


def test_spool_then_live_without_gap_or_repeat(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns()
    old = [_sample(now - k * 1_000_000_000) for k in (1200, 900, 30)]  # 20 min of history
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"samples-{old[0].t_ns}-1.jsonl").write_text(
        "".join(s.to_json() + "\n" for s in old))
    asked: list[int | None] = []
    live = [_sample(now + 1)]

    def fake_subscribe(home: Path, since_ns: int | None = None, **_: object) -> object:
        asked.append(since_ns)
        return iter(live)

    monkeypatch.setattr(client, "subscribe", fake_subscribe)
    stream = feed.daemon_source(tmp_path)(now - 1500 * 1_000_000_000)
    got = list(stream)
    assert [s.t_ns for s in got] == [s.t_ns for s in old] + [now + 1]
    assert asked == [old[-1].t_ns]  # the daemon replays only what the spool did not have


def test_nothing_running_means_no_extra_history(tmp_path: Path) -> None:
    assert feed.oldest_active_start_ns(tmp_path) is None
