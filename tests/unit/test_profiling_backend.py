"""The backend registry and the shared watch set."""

from __future__ import annotations

import pytest

from profiling.backends.base import (
    BACKEND_FACTORIES,
    Backend,
    BackendUnavailable,
    WatchSet,
    load_backend,
)
from profiling.backends.host import HostBackend
from profiling.sample import Sample


def test_watch_set_versions_and_prune() -> None:
    ws = WatchSet()
    v0 = ws.version
    ws.add(10, "a", 1.0, now_ns=5)
    ws.add(11, None)
    assert ws.version > v0 and sorted(ws.pids()) == [10, 11] and len(ws) == 2
    assert ws.entries()[0].to_dict() == {"pid": 10, "run_id": "a", "since_ns": 5}
    assert ws.discard(10) and not ws.discard(10)
    v1 = ws.version
    removed = ws.prune(lambda w: w.pid != 11)
    assert [w.pid for w in removed] == [11] and len(ws) == 0 and ws.version > v1
    assert ws.prune(lambda w: False) == []


def test_prune_keeps_an_entry_re_added_meanwhile() -> None:
    ws = WatchSet()
    ws.add(7, "old")

    def alive(w):  # type: ignore[no-untyped-def]
        ws.add(7, "new")  # re-watched while the check ran
        return False

    assert ws.prune(alive) == []
    assert ws.entries()[0].run_id == "new"


def test_load_backend() -> None:
    ws = WatchSet()
    backend = load_backend("psutil", ws)
    assert isinstance(backend, HostBackend) and backend.watch_set is ws
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        load_backend("nope", ws)


def test_unloadable_backend_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKEND_FACTORIES, "ghost", "profiling.no_such_module:Ghost")
    with pytest.raises(BackendUnavailable, match="cannot be loaded"):
        load_backend("ghost", WatchSet())


def test_a_minimal_backend_needs_only_three_methods() -> None:
    class Fake(Backend):
        name = "simulated"

        def devices(self) -> list[str]:
            return ["gpu0"]

        def sample(self, now_ns: int) -> list[Sample]:
            return [Sample(t_ns=now_ns, host="h", device="gpu0", source="simulated")]

    fake = Fake()
    fake.watch(1)
    fake.unwatch(1)
    fake.close()
    assert fake.sample(5)[0].simulated
