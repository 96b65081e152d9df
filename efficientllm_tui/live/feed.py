"""Where live samples come from: the profiling daemon, or a fake feed for tests and demos.

A sample source is a callable `source(since_ns) -> iterator of Sample`: the daemon's replays
its ring after `since_ns` and then streams live (profiling.daemon.client.subscribe). It raises when
no daemon runs; `pump` turns that into a state change and retries, so the app never crashes
on a missing daemon. Samples are handed on in batches: one message per ~50 ms at most.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from profiling.sample import Sample

BATCH_MAX_AGE_S = 0.05
"""Longest a sample waits in a batch once the next one arrives."""
BATCH_MAX_SAMPLES = 2_000
"""Largest batch (a ring replay arrives in several)."""
RETRY_S = 3.0
"""Pause between attempts to reach a daemon that is not running."""


class SampleSource(Protocol):
    """Opens a stream of samples newer than `since_ns` (None: live only)."""

    def __call__(self, since_ns: int | None) -> Iterator[Sample]: ...


def daemon_source(home: Path) -> SampleSource:
    """The profiling daemon of `home` (replay of its ring, then live)."""

    def open_stream(since_ns: int | None) -> Iterator[Sample]:
        from profiling.daemon import client

        if since_ns is None:
            return client.subscribe(home, since_ns=None)
        # The daemon's ring holds minutes; the spool holds every sample since the daemon
        # started. Replay the spool first, then ask the daemon for what came after it, so a
        # reattached dashboard shows a long run's whole history without a gap or a repeat.
        replay = _spool_replay(home, since_ns)
        tail_ns = replay[-1].t_ns if replay else since_ns
        return _chain(replay, client.subscribe(home, since_ns=tail_ns))

    return open_stream


def oldest_active_start_ns(home: Path) -> int | None:
    """When the oldest still-running run started (its first event), so a reattached
    dashboard can replay its whole history; None when nothing runs."""
    from efficientllm_tui.runs import rundir

    starts = []
    for run_dir in rundir.iter_dirs(home):
        if (run_dir / rundir.INGESTED_FILE).exists() or not rundir.runner_alive(run_dir):
            continue
        events, _ = rundir.read_events(run_dir)
        if events:
            starts.append(events[0].t_ns)
    return min(starts) if starts else None


def _spool_replay(home: Path, since_ns: int) -> list[Sample]:
    from profiling import home as homes
    from profiling.daemon import spool

    try:
        found = spool.read_samples(homes.spool_dir(home), since_ns + 1, time.time_ns())
    except OSError:
        return []
    return sorted(found, key=lambda s: s.t_ns)


class _chain:
    """Spool samples, then a live subscription; `close()` closes the subscription."""

    def __init__(self, first: list[Sample], live: Any) -> None:
        self._first = iter(first)
        self._live = live

    def __iter__(self) -> _chain:
        return self

    def __next__(self) -> Sample:
        for sample in self._first:
            return sample
        return next(self._live)

    def close(self) -> None:
        close = getattr(self._live, "close", None)
        if close is not None:
            close()


@dataclass
class FeedState:
    """What the pump knows about its source, for the screen to say."""

    connected: bool
    detail: str


def pump(
    source: SampleSource,
    since_ns: int | None,
    *,
    on_batch: Callable[[list[Sample]], None],
    on_state: Callable[[FeedState], None],
    stopped: Callable[[], bool],
    retry_s: float = RETRY_S,
) -> None:
    """Move samples from `source` to `on_batch` until `stopped()`; reconnect when it ends.

    A reader thread blocks on the stream and hands samples over a queue, so a batch is
    flushed after BATCH_MAX_AGE_S even when no further sample comes. `since_ns` advances
    with every sample, so a reconnect replays only what was missed.
    """
    while not stopped():
        try:
            stream = source(since_ns)
        except Exception as e:  # noqa: BLE001 - any failure means "no live data for now"
            on_state(FeedState(False, _one_line(e)))
            _sleep(retry_s, stopped)
            continue
        on_state(FeedState(True, "streaming"))
        inbox: queue.SimpleQueue[Sample | _End] = queue.SimpleQueue()
        reader = threading.Thread(
            target=_read, args=(stream, inbox), daemon=True, name="efficientllm-sample-reader"
        )
        reader.start()
        end: _End | None = None
        batch: list[Sample] = []
        first_at = 0.0
        try:
            while not stopped():
                wait = BATCH_MAX_AGE_S - (time.monotonic() - first_at) if batch else 0.05
                try:
                    item = inbox.get(timeout=max(0.001, wait))
                except queue.Empty:
                    if batch:
                        on_batch(batch)
                        batch = []
                    continue
                if isinstance(item, _End):
                    end = item
                    break
                if not batch:
                    first_at = time.monotonic()
                batch.append(item)
                since_ns = item.t_ns if since_ns is None else max(since_ns, item.t_ns)
                if len(batch) >= BATCH_MAX_SAMPLES:
                    on_batch(batch)
                    batch = []
        finally:
            if batch:
                on_batch(batch)
            close = getattr(stream, "close", None)
            if callable(close):
                close()  # wakes the reader if it is blocked on the stream
        if stopped():
            return
        on_state(FeedState(False, end.reason if end else "the sample stream ended"))
        _sleep(retry_s, stopped)


@dataclass(frozen=True)
class _End:
    reason: str


def _read(stream: Iterator[Sample], inbox: queue.SimpleQueue[Sample | _End]) -> None:
    try:
        for sample in stream:
            inbox.put(sample)
        inbox.put(_End(getattr(stream, "closed_reason", None) or "the sample stream ended"))
    except Exception as e:  # noqa: BLE001 - reported as the reason the stream ended
        inbox.put(_End(_one_line(e)))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _sleep(seconds: float, stopped: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not stopped() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


class SyntheticFeed:
    """A deterministic fake daemon: `n_gpus` simulated GPUs plus the host, source 'simulated'.

    `history_s` of samples are replayed at once (as the daemon's ring would), then, if
    `live`, new ones come at `rate_hz` in real time until `stop()`. Values are smooth
    functions of time, so charts move without randomness.

    Args:
        n_gpus: Simulated GPUs (gpu0 ... gpuN-1); the host is always added as `cpu`.
        rate_hz: Samples per device per second.
        t0_ns: Wall clock of the first sample (fixed in tests, so screens are repeatable).
        history_s: Seconds of samples before `t0_ns + history_s` given at once.
        live: Keep producing samples in real time after the history.
    """

    def __init__(
        self,
        n_gpus: int = 2,
        rate_hz: float = 10.0,
        *,
        t0_ns: int | None = None,
        history_s: float = 60.0,
        live: bool = False,
    ) -> None:
        self.n_gpus = n_gpus
        self.rate_hz = rate_hz
        self.t0_ns = time.time_ns() - int(history_s * 1e9) if t0_ns is None else t0_ns
        self.history_s = history_s
        self.live = live
        self.produced = 0
        self._stop = threading.Event()
        self.burst: list[Sample] = []
        """Samples to hand out at once, before the next tick (benchmarks fill it)."""
        self._burst_lock = threading.Lock()

    @property
    def devices(self) -> list[str]:
        return [f"gpu{i}" for i in range(self.n_gpus)] + ["cpu"]

    def stop(self) -> None:
        self._stop.set()

    def inject(self, samples: list[Sample]) -> None:
        """Hand these samples out at the next tick, all at once (a burst)."""
        with self._burst_lock:
            self.burst.extend(samples)

    def tick(self, k: int) -> list[Sample]:
        """The samples of every device at tick `k` (t = t0 + k / rate)."""
        t_ns = self.t0_ns + int(k * 1e9 / self.rate_hz)
        return [self.sample(dev, t_ns) for dev in self.devices]

    def sample(self, device: str, t_ns: int) -> Sample:
        t = (t_ns - self.t0_ns) / 1e9
        if device == "cpu":
            return Sample(
                t_ns=t_ns,
                host="sim",
                device="cpu",
                source="simulated",
                mem_used_bytes=int((24 + 2 * math.sin(t / 20)) * 2**30),
                mem_total_bytes=64 * 2**30,
                util_pct=35 + 15 * math.sin(t / 7),
                cpu_pct=90 + 40 * math.sin(t / 5),
                rss_bytes=3 * 2**30,
            )
        i = int(device[3:] or 0)
        phase = t / 12 + i
        busy = 0.5 + 0.5 * math.sin(phase)
        return Sample(
            t_ns=t_ns,
            host="sim",
            device=device,
            source="simulated",
            mem_used_bytes=int((20 + 40 * busy + 2 * i) * 2**30),
            mem_total_bytes=81559 * 2**20,
            util_pct=40 + 59 * busy,
            sm_active_pct=20 + 69 * busy,
            tensor_active_pct=5 + 52 * busy,
            dram_active_pct=10 + 34 * busy,
            power_w=90 + 495 * busy,
            sm_clock_mhz=1410 + 570 * busy,
            temp_c=35 + 32 * busy,
        )

    def __call__(self, since_ns: int | None) -> Iterator[Sample]:
        return _Stream(self, since_ns)

    def _stream(self, since_ns: int | None, closed: threading.Event) -> Iterator[Sample]:
        n_hist = int(self.history_s * self.rate_hz)
        for k in range(n_hist + 1):
            for s in self.tick(k):
                if since_ns is None or s.t_ns > since_ns:
                    self.produced += 1
                    yield s
        if not self.live:
            # Like an idle daemon: connected, nothing new (but bursts still arrive).
            while not (self._stop.wait(0.02) or closed.is_set()):
                yield from self._take_burst()
            return
        start_wall = time.monotonic()
        k = n_hist + 1
        while not (self._stop.is_set() or closed.is_set()):
            due = start_wall + (k - n_hist) / self.rate_hz
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if delay < -1.0:  # fell behind (a busy machine): skip ticks, as the daemon does
                k += int(-delay * self.rate_hz)
            yield from self._take_burst()
            for s in self.tick(k):
                self.produced += 1
                yield s
            k += 1

    def _take_burst(self) -> Iterator[Sample]:
        with self._burst_lock:
            burst, self.burst = self.burst, []
        self.produced += len(burst)
        yield from burst


class _Stream:
    """One open stream of a SyntheticFeed; close() ends it from any thread."""

    def __init__(self, feed: SyntheticFeed, since_ns: int | None) -> None:
        self._closed = threading.Event()
        self._it = feed._stream(since_ns, self._closed)

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        return next(self._it)

    def close(self) -> None:
        self._closed.set()
