"""The ring buffer: capacity, order, since/devices selection, thread safety."""

from __future__ import annotations

import threading
import time

import pytest

from profiling.daemon.ring import Ring
from profiling.daemon.wire import sample_line
from profiling.sample import Sample


def smp(t: int, device: str = "cpu") -> Sample:
    return Sample(t_ns=t, host="h", device=device, source="psutil", util_pct=float(t % 100))


def test_keeps_newest_in_order() -> None:
    ring = Ring(3)
    for t in range(1, 6):
        ring.append(smp(t))
    assert [s.t_ns for s in ring.snapshot()] == [3, 4, 5]
    assert len(ring) == 3
    assert ring.appended == 5


def test_since_is_exclusive_and_devices_filter() -> None:
    ring = Ring(10)
    ring.extend([smp(1), smp(1, "gpu0")])
    ring.extend([smp(2), smp(2, "gpu0")])
    assert [s.t_ns for s in ring.snapshot(since_ns=1)] == [2, 2]
    assert [s.device for s in ring.snapshot(devices={"gpu0"})] == ["gpu0", "gpu0"]
    assert ring.snapshot(since_ns=2) == []


def test_lines_match_samples() -> None:
    ring = Ring(10)
    a, b = smp(1), smp(2)
    ring.append(a, sample_line(a))
    ring.append(b)  # encoded lazily
    assert ring.snapshot_lines() == [(a.to_json() + "\n").encode(), (b.to_json() + "\n").encode()]
    with pytest.raises(ValueError):
        ring.extend([a], [])


def test_sizing() -> None:
    ring = Ring.for_duration(600, 10, 2)
    assert ring.capacity >= 12_000
    assert Ring.for_duration(600, 1000, 100, max_capacity=1000).capacity == 1000
    with pytest.raises(ValueError):
        Ring(0)


def test_concurrent_writer_and_readers() -> None:
    ring = Ring(500)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                snap = ring.snapshot(since_ns=100)
                ts = [s.t_ns for s in snap]
                assert ts == sorted(ts) and len(ts) <= 500
                time.sleep(0.0005)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    for t in range(0, 20_000, 2):  # ticks of two samples
        ring.extend([smp(t), smp(t + 1)])
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert ring.appended == 20_000
    assert [s.t_ns for s in ring.snapshot()] == list(range(19_500, 20_000))
