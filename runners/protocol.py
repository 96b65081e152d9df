"""The launcher-runner protocol: RunSpec in, Event lines out, RunResult at the end.

Standard library only, so the app (which must never load torch) and the runners (which
must never load the app) can both import it. Everything here round-trips through JSON:
`spec.json` in the run dir holds one RunSpec, `events.jsonl` holds one Event a line.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FAMILIES = ("inference", "finetuning", "pretraining")
EVENT_KINDS = ("started", "phase", "step", "window", "result", "error", "log")
ERROR_TYPES = ("oom", "unsupported", "bad_input", "crash")
STATUSES = ("queued", "running", "ok", "failed", "oom", "cancelled", "orphaned")

BUILTIN_DATASETS = frozenset({"pydoc"})
"""Dataset names that are not files: `pydoc`, the Python documentation's topic texts every
CPython ships (pretraining's offline corpus; runners.data.textstream.PYDOC)."""

SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"
PID_FILE = "runner.pid"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

ParamValue = str | int | float | bool


class ProtocolError(ValueError):
    """A record that does not follow the protocol (bad field, bad JSON)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ProtocolError(msg)


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what} is not valid JSON: {e}") from e


def new_run_id(model: str, technique: str, now_ns: int | None = None) -> str:
    """A sortable, readable, unique-enough id: `20261127-003512-4f2a-tiny-fp32`."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns / 1e9))
    tail = f"{(now_ns // 1000) % 0x10000:04x}"
    safe = re.sub(r"[^A-Za-z0-9.]+", "-", f"{model}-{technique}").strip("-")
    return f"{stamp}-{tail}-{safe}"[:128]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run: one model x technique pair with the family's parameters."""

    run_id: str
    """Unique id; also the run dir name under `runs/`."""
    family: str
    """`inference`, `finetuning` or `pretraining`."""
    technique: str
    """Technique id from the catalog (e.g. `fp32`, `lora`, `gqa`)."""
    model: str
    """Model id from the catalog, or a local path to weights."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda:N`."""
    seed: int = 0
    """Seeds torch, the data order and the simulated backend."""
    batch_size: int = 1
    """Requests per batch (inference) or sequences per step (training)."""
    seq_len: int = 64
    """Prompt length in tokens (inference) or training sequence length."""
    new_tokens: int = 32
    """Generated tokens per request (inference); EOS is ignored so runs compare."""
    steps: int = 8
    """Measured iterations: requests (inference) or optimizer steps (training)."""
    warmup: int = 2
    """Iterations run before the measured window, never counted."""
    dataset: str | None = None
    """Path to a user dataset; None uses the shipped text."""
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    """Free-form technique parameters from `--set key=value`."""
    simulate_gpu: bool = False
    """Use the simulated GPU backend (labelled `simulated` everywhere)."""
    created_ns: int = 0
    """Wall clock when the launcher made the spec."""
    world_size: int = 1
    """Processes of the run, one device each (runners.distributed): N GPUs from `device`
    on, or N CPU processes on `cpu`; above 1 the launcher starts the runner under torchrun.
    Left out of spec.json when 1, so single-device specs read as before."""

    def __post_init__(self) -> None:
        _check(isinstance(self.run_id, str) and bool(_RUN_ID_RE.match(self.run_id)),
               f"invalid run_id {self.run_id!r}")
        _check(self.family in FAMILIES,
               f"unknown family {self.family!r} (choose from {', '.join(FAMILIES)})")
        _check(isinstance(self.technique, str) and bool(self.technique), "technique is empty")
        _check(isinstance(self.model, str) and bool(self.model), "model is empty")
        _check(isinstance(self.device, str) and bool(_DEVICE_RE.match(self.device)),
               f"invalid device {self.device!r} (use auto, cpu or cuda:N)")
        for name in ("batch_size", "seq_len", "new_tokens", "steps", "world_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "seed", "created_ns"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   f"{name} must be a non-negative integer, got {value!r}")
        _check(isinstance(self.params, Mapping), "params must be a mapping")
        for key, value in self.params.items():
            _check(isinstance(key, str) and bool(key), f"invalid parameter name {key!r}")
            _check(isinstance(value, (str, int, float, bool)),
                   f"parameter {key!r} must be a string, number or boolean")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = dict(self.params)
        if self.world_size == 1:
            del out["world_size"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        _check(isinstance(data, Mapping), "a run spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown run spec field(s): {', '.join(unknown)}")
        try:
            return cls(**dict(data))
        except TypeError as e:  # missing required fields
            raise ProtocolError(f"incomplete run spec: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(_loads(text, "spec"))

    def param(self, key: str, default: ParamValue) -> Any:
        """A `--set` parameter coerced to the type of `default`."""
        if key not in self.params:
            return default
        return coerce_param(key, self.params[key], type(default))


def coerce_param(key: str, value: ParamValue, kind: type) -> Any:
    """Coerce a `--set` value to `kind`, with a clear error naming the key."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        return str(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"parameter {key!r}: expected {kind.__name__}, got {value!r}") from None


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, ParamValue]:
    """Parse `--set key=value` items; numbers and booleans get their JSON type."""
    out: dict[str, ParamValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        _check(bool(sep) and bool(key) and re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key) is not None,
               f"malformed --set {item!r} (expected key=value)")
        raw = raw.strip()
        value: ParamValue
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                    if not math.isfinite(value):
                        value = raw
                except ValueError:
                    value = raw
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Event:
    """One line of events.jsonl: `{"t_ns": ..., "kind": ..., **fields}`."""

    t_ns: int
    """Wall clock, time.time_ns(), when the event happened."""
    kind: str
    """started | phase | step | window | result | error | log."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific fields, flattened into the JSON object."""

    def __post_init__(self) -> None:
        _check(isinstance(self.t_ns, int) and self.t_ns >= 0, f"invalid t_ns {self.t_ns!r}")
        _check(self.kind in EVENT_KINDS, f"unknown event kind {self.kind!r}")
        _check("t_ns" not in self.fields and "kind" not in self.fields,
               "event fields may not shadow t_ns or kind")
        if self.kind == "error":
            _check(self.fields.get("type") in ERROR_TYPES,
                   f"error event type must be one of {', '.join(ERROR_TYPES)}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"t_ns": self.t_ns, "kind": self.kind, **self.fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False,
                          default=_json_default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        _check(isinstance(data, Mapping), "an event must be a JSON object")
        rest = {k: v for k, v in data.items() if k not in ("t_ns", "kind")}
        return cls(t_ns=data.get("t_ns"), kind=data.get("kind"), fields=rest)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls.from_dict(_loads(line, "event"))

    # Constructors, one a kind, so every writer spells the fields the same way.
    @classmethod
    def started(cls, *, pid: int, host: str, device: str, versions: Mapping[str, str | None],
                **extra: Any) -> Event:
        return cls(time.time_ns(), "started", {"pid": pid, "host": host, "device": device,
                                               "versions": dict(versions), **extra})

    @classmethod
    def phase(cls, name: str, **extra: Any) -> Event:
        return cls(time.time_ns(), "phase", {"name": name, **extra})

    @classmethod
    def step(cls, *, step: int, phase: str, latency_s: float, tokens: int | None = None,
             samples: int | None = None, loss: float | None = None, **extra: Any) -> Event:
        return cls(time.time_ns(), "step", {"step": step, "phase": phase, "latency_s": latency_s,
                                            "tokens": tokens, "samples": samples, "loss": loss,
                                            **extra})

    @classmethod
    def window(cls, *, name: str, t0_ns: int, t1_ns: int, device: str,
               energy_j: float | None, energy_source: str | None = None, **extra: Any) -> Event:
        return cls(time.time_ns(), "window", {"name": name, "t0_ns": t0_ns, "t1_ns": t1_ns,
                                              "device": device, "energy_j": energy_j,
                                              "energy_source": energy_source, **extra})

    @classmethod
    def result(cls, result: RunResult) -> Event:
        return cls(time.time_ns(), "result", result.to_dict())

    @classmethod
    def error(cls, type: str, message: str, **extra: Any) -> Event:  # noqa: A002
        return cls(time.time_ns(), "error", {"type": type, "message": message, **extra})

    @classmethod
    def log(cls, message: str, **extra: Any) -> Event:
        return cls(time.time_ns(), "log", {"message": message, **extra})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass(frozen=True, slots=True)
class Metric:
    """One named number of a run, in long form (the `metrics` table row)."""

    name: str
    """Metric id, e.g. `al_s`, `it_tokens_per_s`, `amu`."""
    value: float | None
    """The number; None when it could not be measured (never a fake 0)."""
    unit: str
    """Unit: `s`, `tokens/s`, `fraction`, `GiB`, `W`, `J`, ..."""
    source: str
    """Where it came from: `runner`, `nvml`, `gpm`, `psutil`, `rapl`, `simulated`, ...;
    `none` when the value could not be measured."""
    note: str | None = None
    """Why the value is None (or what limits it, e.g. partial sample coverage); else None."""

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and bool(self.name), "metric name is empty")
        _check(self.note is None or isinstance(self.note, str), "metric note must be text")
        if self.value is not None:
            _check(isinstance(self.value, (int, float)) and not isinstance(self.value, bool),
                   f"metric {self.name!r} value must be a number or None")
            _check(math.isfinite(self.value), f"metric {self.name!r} value is not finite")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value, "unit": self.unit,
                               "source": self.source}
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        _check(isinstance(data, Mapping), "a metric must be a JSON object")
        value = data.get("value")
        note = data.get("note")
        return cls(name=data.get("name"), value=None if value is None else float(value),  # type: ignore[arg-type]
                   unit=str(data.get("unit", "")), source=str(data.get("source", "runner")),
                   note=None if note is None else str(note))

    @classmethod
    def missing(cls, name: str, unit: str, note: str) -> Metric:
        """A value that could not be measured: None, source `none`, and the reason."""
        return cls(name, None, unit, "none", note)


ENERGY_METRICS = frozenset({"energy_j", "aec_w", "j_per_token", "prefill_energy_j",
                            "prefill_j_per_token", "decode_energy_j", "decode_j_per_token"})
"""Metrics read from the energy counter: a NULL one takes the window's energy_note."""

RANDOM_WEIGHTS_NOTE = "random weights: no quality signal"
"""Why quality metrics (perplexity, MCR) are NULL for inference and fine-tuning on random
weights: a random model's perplexity is about the vocabulary size at every precision, so
a quality ratio would be noise and MCR would collapse to the size ratio."""

NO_PEAK_NOTE = ("no peak FLOP/s for this device: measured on CUDA only; give "
                "--set peak_tflops=N")
"""Why MFU is NULL: without a peak there is nothing to divide by."""

NOT_MEASURED_NOTE = "not measured by this run"

_CUDA_PEAK_NOTE = ("torch's CUDA allocator peak: CUDA runs only (CPU memory: peak_rss_gib, "
                   "amu)")
DEFAULT_NOTES = {"peak_allocated_gib": _CUDA_PEAK_NOTE, "peak_reserved_gib": _CUDA_PEAK_NOTE}
"""Why a metric is NULL when the family gave no reason of its own."""


def explain_missing(metrics: Sequence[Metric], notes: Mapping[str, str | None]
                    ) -> tuple[Metric, ...]:
    """`metrics` with every None value given source `none` and a note saying why.

    The note is `notes[name]` when given, else the metric's own, else DEFAULT_NOTES', else
    NOT_MEASURED_NOTE:
    a NULL in the database always comes with its reason (DESIGN.md section 6).
    """
    out = []
    for m in metrics:
        if m.value is None:
            note = (notes.get(m.name) or m.note or DEFAULT_NOTES.get(m.name)
                    or NOT_MEASURED_NOTE)
            m = Metric(m.name, None, m.unit, "none", note)
        out.append(m)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a runner reports at the end of a run (the `result` event)."""

    run_id: str
    """The run this result belongs to."""
    status: str
    """`ok`, `failed` or `oom` (see STATUSES)."""
    metrics: tuple[Metric, ...] = ()
    """The runner's own metrics (latency, throughput, torch memory, energy, quality)."""
    error_type: str | None = None
    """oom | unsupported | bad_input | crash when status is not ok."""
    error_message: str | None = None
    """Human-readable reason when status is not ok."""
    info: Mapping[str, Any] = field(default_factory=dict)
    """Descriptive facts: parameter counts, weight source (`random`/`real`), dtype, ..."""

    def __post_init__(self) -> None:
        _check(self.status in STATUSES, f"unknown status {self.status!r}")
        _check(self.error_type is None or self.error_type in ERROR_TYPES,
               f"unknown error type {self.error_type!r}")

    def metric(self, name: str) -> float | None:
        for m in self.metrics:
            if m.name == name:
                return m.value
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status,
                "metrics": [m.to_dict() for m in self.metrics],
                "error_type": self.error_type, "error_message": self.error_message,
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        _check(isinstance(data, Mapping), "a result must be a JSON object")
        return cls(run_id=str(data.get("run_id")), status=str(data.get("status")),
                   metrics=tuple(Metric.from_dict(m) for m in data.get("metrics") or ()),
                   error_type=data.get("error_type"), error_message=data.get("error_message"),
                   info=dict(data.get("info") or {}))
