"""What every benchmark family shares: a config validated on construction, a run context
that emits events, and a registry that imports a family's module only when it is run.

A family is a class generic over its config dataclass (the optimum-benchmark shape): the
config turns a RunSpec plus its `--set` parameters into checked, typed fields, so a family's
`run` never meets a malformed value. The parameters' types, choices and ranges come from
runners.params, the table the launcher also checks before a runner starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from runners import params
from runners.errors import BadInput, Unsupported
from runners.models.cards import ModelCard
from runners.protocol import Event, RunResult, RunSpec
from runners.system.eventlog import EventLog

COMMON_FIELDS = ("run_id", "technique", "model", "device", "seed", "batch_size", "seq_len",
                 "new_tokens", "steps", "warmup", "dataset")
"""RunSpec fields every family config carries; the rest of a config are `--set` params."""


@dataclass(frozen=True)
class FamilyConfig:
    """The RunSpec fields every family uses; subclasses add their `--set` parameters.

    A subclass declares one field per parameter of its family in runners.params, with the
    same type and default (a unit test holds them together); construction checks every
    parameter against that table and stores it in canonical form.
    """

    run_id: str
    technique: str
    model: str
    device: str
    """Resolved torch device: `cpu` or `cuda:N` (never `auto`)."""
    seed: int
    batch_size: int
    seq_len: int
    new_tokens: int
    steps: int
    warmup: int
    dataset: str | None

    family: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.device != "cpu" and not self.device.startswith("cuda:"):
            raise BadInput(f"config device must be resolved (cpu or cuda:N), got {self.device!r}")
        for name, value in params.check_values(self.family, self.param_values()).items():
            object.__setattr__(self, name, value)

    @classmethod
    def param_kinds(cls) -> dict[str, type]:
        """The `--set` parameters this config accepts, with the type each is coerced to."""
        return {name: p.kind for name, p in params.of(cls.family).items()}

    def param_values(self) -> dict[str, Any]:
        """The `--set` parameters of this config by name."""
        return {name: getattr(self, name) for name in params.of(self.family)}

    @classmethod
    def from_spec(cls, spec: RunSpec, device: str) -> FamilyConfig:
        """The config of `spec` on the resolved `device`; BadInput names any bad parameter."""
        values: dict[str, Any] = {name: getattr(spec, name) for name in COMMON_FIELDS}
        values["device"] = device
        return cls(**values, **params.resolve(cls.family, spec.params))


ConfigT = TypeVar("ConfigT", bound=FamilyConfig)


class RunContext:
    """What a family needs from the process around it: where it runs and how to report."""

    def __init__(self, spec: RunSpec, run_dir: Path, home: Path, device: str,
                 log: EventLog) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.home = home
        self.device = device
        self.log = log
        self.dist: Any = None
        """The runners.distributed.Group of a multi-rank run, else None."""

    @property
    def sample_device(self) -> str:
        """The device as the profiling samples name it: `cpu`, `gpu0`, `gpu1`, ..."""
        return sample_device(self.device)

    def emit(self, event: Event) -> Event:
        if self.dist is not None:  # steps and windows merged over the ranks first
            return self.dist.emit(event, self.log.emit)  # type: ignore[no-any-return]
        return self.log.emit(event)

    def phase(self, name: str, **extra: Any) -> None:
        self.emit(Event.phase(name, **extra))


def sample_device(device: str) -> str:
    """The profiling daemon's name for a torch device: `cpu`, or `gpu<NVML index>`.

    `cuda:N` is mapped through CUDA_VISIBLE_DEVICES to the NVML index the daemon samples.
    """
    from profiling.backends.energy import sample_device_for

    return sample_device_for(device)


class Family(Generic[ConfigT]):
    """One benchmark family. Subclasses set `name`, `config_type`, `techniques`, `run`."""

    name: ClassVar[str] = ""
    config_type: ClassVar[type[FamilyConfig]] = FamilyConfig
    techniques: ClassVar[frozenset[str]] = frozenset()
    """Technique ids this family's runner implements; other catalog ids are `unsupported`."""

    def __init__(self, config: ConfigT, card: ModelCard, ctx: RunContext) -> None:
        self.config = config
        self.card = card
        self.ctx = ctx

    @classmethod
    def check_technique(cls, technique: str) -> None:
        if technique not in cls.techniques:
            raise Unsupported(f"technique {technique!r} ({cls.name}) is not implemented yet; "
                              f"implemented: {', '.join(sorted(cls.techniques))}")

    def validate(self) -> None:
        """Checks that need the model card; run before the device lock, so bad input fails
        at once instead of queueing behind another run. Subclasses call this first: it
        applies runners.params.pair_problem, the rules the launcher checked already."""
        c = self.config
        problem = params.pair_problem(self.name, c.technique, self.card, seq_len=c.seq_len,
                                      new_tokens=c.new_tokens, values=c.param_values())
        if problem:
            raise BadInput(problem)

    def run(self) -> RunResult:
        """Load, warm up, measure, evaluate; return the `ok` result (raise on failure)."""
        raise NotImplementedError

    def failure_info(self) -> Mapping[str, Any]:
        """Facts for a failed run's result (an OOM's batch size and peak memory)."""
        c = self.config
        return {"batch_size": c.batch_size, "seq_len": c.seq_len, "new_tokens": c.new_tokens,
                "device": c.device}


_MODULES = {"inference": "runners.families.inference", "finetuning": "runners.families.finetuning",
            "pretraining": "runners.families.pretraining"}
_REGISTRY: dict[str, type[Family[Any]]] = {}


def register(cls: type[Family[Any]]) -> type[Family[Any]]:
    """Class decorator: make a family runnable by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def family_class(name: str) -> type[Family[Any]]:
    """The registered family `name`, importing its module on first use."""
    if name not in _REGISTRY:
        module = _MODULES.get(name)
        if module is None:
            raise BadInput(f"unknown family {name!r} (choose from {', '.join(_MODULES)})")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            raise Unsupported(f"family {name!r} is not implemented yet") from None
    return _REGISTRY[name]
