"""Records of the launcher-runner protocol: validation and JSON round-trips."""

from __future__ import annotations

import json

import pytest

from profiling.sample import Sample, SampleError
from runners.protocol import (
    Event,
    Metric,
    ProtocolError,
    RunResult,
    RunSpec,
    coerce_param,
    new_run_id,
    parse_set,
)


def _spec(**kw: object) -> RunSpec:
    base = dict(run_id="r1", family="inference", technique="fp32", model="tiny")
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_spec_round_trip() -> None:
    spec = _spec(params={"rank": 8, "engine": "eager", "dropout": 0.1, "flag": True},
                 dataset="/tmp/x.jsonl", created_ns=5)
    again = RunSpec.from_json(spec.to_json())
    assert again == spec
    assert again.param("rank", 64) == 8
    assert again.param("missing", 3) == 3


@pytest.mark.parametrize("kw, msg", [
    ({"family": "training"}, "unknown family"),
    ({"device": "gpu"}, "invalid device"),
    ({"batch_size": 0}, "batch_size"),
    ({"steps": True}, "steps"),
    ({"warmup": -1}, "warmup"),
    ({"run_id": "../escape"}, "run_id"),
    ({"params": {"x": [1]}}, "parameter 'x'"),
])
def test_spec_rejects_bad_fields(kw: dict, msg: str) -> None:
    with pytest.raises(ProtocolError, match=msg):
        _spec(**kw)


def test_spec_from_json_errors_are_clear() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        RunSpec.from_json("{nope")
    with pytest.raises(ProtocolError, match="unknown run spec field"):
        RunSpec.from_dict({**_spec().to_dict(), "bogus": 1})
    with pytest.raises(ProtocolError, match="incomplete"):
        RunSpec.from_dict({"run_id": "x"})


def test_parse_set_types_and_errors() -> None:
    assert parse_set(["a=1", "b=0.5", "c=true", "d=text", "e=1e3", "f=nan"]) == {
        "a": 1, "b": 0.5, "c": True, "d": "text", "e": 1000.0, "f": "nan"}
    for bad in ["novalue", "=3", "1x=2"]:
        with pytest.raises(ProtocolError, match="malformed --set"):
            parse_set([bad])


def test_coerce_param() -> None:
    assert coerce_param("k", "yes", bool) is True
    assert coerce_param("k", 3.0, int) == 3
    with pytest.raises(ProtocolError, match="expected int"):
        coerce_param("k", 3.5, int)
    with pytest.raises(ProtocolError, match="expected float"):
        coerce_param("k", "abc", float)


def test_event_round_trip_and_constructors() -> None:
    ev = Event.step(step=3, phase="measure", latency_s=0.25, tokens=32, samples=1, ttft_s=0.01)
    line = ev.to_json()
    assert "\n" not in line
    again = Event.from_json(line)
    assert again == ev and again.get("ttft_s") == 0.01
    assert json.loads(line)["kind"] == "step"
    with pytest.raises(ProtocolError, match="unknown event kind"):
        Event.from_dict({"t_ns": 1, "kind": "nope"})
    with pytest.raises(ProtocolError, match="error event type"):
        Event.error("weird", "x")
    with pytest.raises(ProtocolError):
        Event.from_json('{"t_ns": -1, "kind": "log"}')


def test_event_refuses_nan() -> None:
    with pytest.raises(ValueError):
        Event.step(step=0, phase="m", latency_s=float("nan")).to_json()


def test_result_round_trip() -> None:
    res = RunResult(run_id="r1", status="oom", metrics=(Metric("al_s", 0.5, "s", "runner"),
                                                        Metric("aec_w", None, "W", "none")),
                    error_type="oom", error_message="CUDA out of memory", info={"batch_size": 64})
    again = RunResult.from_dict(json.loads(Event.result(res).to_json()))
    assert again == res
    assert again.metric("al_s") == 0.5 and again.metric("aec_w") is None
    with pytest.raises(ProtocolError):
        Metric("x", float("inf"), "s", "runner")
    with pytest.raises(ProtocolError):
        RunResult(run_id="r", status="great")


def test_sample_round_trip_and_labels() -> None:
    s = Sample(t_ns=10, host="h", device="gpu0", source="simulated", mem_used_bytes=5,
               sm_active_pct=None)
    assert Sample.from_json(s.to_json()) == s
    assert s.simulated
    with pytest.raises(SampleError):
        Sample(t_ns=1, host="h", device="cpu", source="guess")


def test_run_ids_are_safe_and_sortable() -> None:
    a = new_run_id("qwen2.5-0.5b", "lora/plus", now_ns=1_700_000_000_000_000_000)
    b = new_run_id("qwen2.5-0.5b", "lora/plus", now_ns=1_800_000_000_000_000_000)
    assert a < b and "/" not in a
    _spec(run_id=a)
