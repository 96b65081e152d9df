"""Several processes, one run: what a runner started under torchrun does that a one-device
run does not (a spec with `world_size` > 1).

Why torchrun (torch.distributed.run) and not our own launcher: it already sets every rank's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), picks a free rendezvous port
(`--standalone`), and tears every rank down when one of them fails. The launcher starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m runners RUN_DIR`
(`launch_argv`); this module joins the process group (NCCL on CUDA, gloo on CPU), gives
each rank its device (`cuda:K+local_rank`; every CPU rank shares `cpu`), spreads the model
(DDP, or FSDP2 `fully_shard` for models that do not fit one GPU) and merges what the ranks
measured, so that rank 0 alone writes the run's events.jsonl. The other ranks write theirs
to `events.rank<N>.jsonl` beside it (never ingested; there for a post-mortem).

How multi-device values combine (each rule in the result's `info.combine` too):
- a step event: the slowest rank's latency (every rank waits in the gradient all-reduce, so
  the step lasts as long as the slowest), tokens and samples summed (the global batch), the
  loss the ranks' mean; each rank's latency kept in `rank_latency_s`.
- a window: the earliest t0 and the latest t1; energy summed over the run's distinct
  devices (CPU ranks share one package: counted once), per device in `energy_j_per_device`.
- the result: throughput (tokens/s, samples/s, TT, ST) is the ranks' tokens over the
  longest rank's window; MFU that over N devices' peak; AL and its percentiles from the
  merged steps; energy and AEC summed over devices, with `energy_j_<dev>` and `aec_w_<dev>`
  per device; peak memory the largest rank's, with `peak_allocated_gib_<dev>` per device;
  losses and perplexity the ranks' mean. AMU and PCU come from the samples of every device
  at ingest (per device and the mean). Scaling efficiency against the same workload on one
  device is worked out from the store when it is read, never here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runners.errors import BadInput, Unsupported
from runners.protocol import Event, RunResult, RunSpec
from runners.rank_merge import combine_results, merge_step, merge_window

SHARDINGS = ("auto", "ddp", "fsdp2")
MAX_WORLD_SIZE = 1024

# -- what the launcher needs (standard library only) ------------------------------------------

def launch_argv(python: str, run_dir: str, world_size: int) -> list[str]:
    """The runner's command line: plain `python -m runners RUN_DIR`, or the same under
    torchrun with `world_size` processes on this host."""
    if world_size <= 1:
        return [python, "-m", "runners", run_dir]
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={world_size}", "-m", "runners", run_dir]


def run_devices(device: str, world_size: int) -> list[str]:
    """The distinct devices a run of `world_size` ranks from resolved `device` uses:
    `cuda:K` .. `cuda:K+N-1`, or `cpu` once (CPU ranks share it)."""
    if device == "cpu" or world_size <= 1:
        return [device]
    base = int(device.partition(":")[2] or 0)
    return [f"cuda:{base + i}" for i in range(world_size)]


def parse_device_list(text: str) -> tuple[str, int]:
    """`cuda:0,cuda:1` (or `cuda:2,3`) -> (`cuda:0`, 2): a run's devices must follow each
    other (hide the others with CUDA_VISIBLE_DEVICES); one device is itself with 1."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) <= 1:
        return (parts[0] if parts else text), 1
    indices: list[int] = []
    for part in parts:
        kind, _, index = part.partition(":")
        if kind not in ("cuda", "") or not index.isdigit():
            if part.isdigit():
                indices.append(int(part))
                continue
            raise BadInput(f"device list {text!r}: {part!r} is not cuda:N (a device list "
                           "names GPUs; for several CPU processes use --world-size N)")
        indices.append(int(index))
    if indices != list(range(indices[0], indices[0] + len(indices))):
        raise BadInput(f"device list {text!r}: the devices must follow each other (e.g. "
                       "cuda:2,cuda:3); hide others with CUDA_VISIBLE_DEVICES")
    return f"cuda:{indices[0]}", len(indices)


def is_main() -> bool:
    """Whether this process writes the run's events (rank 0, or no torchrun at all)."""
    return os.environ.get("RANK", "0") in ("", "0")


def saves() -> bool:
    """Whether this process writes what was trained: rank 0, and not under fsdp2 (its
    weights are shards across the ranks; such runs keep nothing)."""
    return is_main() and (_GROUP is None or _GROUP.sharding != "fsdp2")


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def events_name(default: str) -> str:
    """The events file this process writes: the run's own on rank 0, `events.rank<N>.jsonl`
    on the others."""
    return default if is_main() else f"events.rank{rank()}.jsonl"


# -- the process group ----------------------------------------------------------------------

@dataclass
class Group:
    """This rank's place in the run, and the merging of what the ranks measure."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    """This rank's torch device."""
    devices: list[str]
    """Every rank's torch device, by rank."""
    sample_devices: list[str] = field(default_factory=list)
    """Every rank's device as the profiling daemon names it, by rank."""
    sharding: str = "ddp"
    """ddp or fsdp2, resolved."""
    measured_latency_s: list[float] = field(default_factory=list)
    """The merged (slowest rank) latency of every measured step (rank 0)."""
    root: Any = None
    """The fully_shard root module under fsdp2 (for `gathered`)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def emit(self, event: Event, write: Callable[[Event], Event]) -> Event:
        """Write `event`: step and window events are merged over the ranks first (every
        rank emits the same sequence of them: the ranks train in lockstep)."""
        if event.kind not in ("step", "window"):
            return write(event)
        parts = self.gather(dict(event.fields))
        if not self.main:
            return write(event)
        merged = merge_step(parts) if event.kind == "step" else merge_window(
            parts, self.sample_devices)
        if event.kind == "step" and merged.get("phase") == "measure":
            self.measured_latency_s.append(float(merged["latency_s"]))
        return write(Event(event.t_ns, event.kind, merged))

    def merge_result(self, result: RunResult) -> RunResult:
        """Rank 0: the run's result from every rank's; other ranks get theirs back."""
        parts = self.gather(result.to_dict())
        if not self.main:
            return result
        results = [RunResult.from_dict(p) for p in parts]
        return combine_results(results, self.sample_devices, self.measured_latency_s,
                               {"world_size": self.world_size, "sharding": self.sharding,
                                "devices": self.devices, "sample_devices": self.sample_devices})

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


_GROUP: Group | None = None


def current() -> Group | None:
    """The process group of this runner; None for a one-device run."""
    return _GROUP


def join(spec: RunSpec, device: str) -> Group | None:
    """Join the run's process group when the spec asks for several ranks; None otherwise.

    Args:
        device: the spec's device, resolved (`cpu` or `cuda:K`, the first of the run's).

    Raises:
        BadInput: world_size > 1 without torchrun's environment (or a different size).
        Unsupported: fewer GPUs than ranks, or a family that does not run on several.
    """
    global _GROUP
    env_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if spec.world_size == 1:
        if env_size > 1:
            raise BadInput(f"started with WORLD_SIZE={env_size} but the spec has world_size 1")
        return None
    if spec.family == "inference":
        raise Unsupported("inference runs on one device; world_size > 1 is for pretraining "
                          "and finetuning")
    if env_size != spec.world_size:
        raise BadInput(f"the spec has world_size {spec.world_size} but this process was "
                       f"started with WORLD_SIZE={env_size}: start it with torchrun "
                       f"--nproc-per-node={spec.world_size}")
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    devices = [device] * spec.world_size if device == "cpu" else \
        run_devices(device, spec.world_size)
    if device != "cpu":
        count = torch.cuda.device_count()
        last = int(devices[-1].partition(":")[2])
        if last >= count:
            raise Unsupported(f"world_size {spec.world_size} from {device} needs "
                              f"{devices[0]}..{devices[-1]}; this machine has {count} GPU(s)")
        torch.cuda.set_device(devices[local])
    backend = "gloo" if device == "cpu" else "nccl"
    dist.init_process_group(backend=backend)
    me = dist.get_rank()
    _GROUP = Group(me, spec.world_size, local, devices[local], devices)
    return _GROUP


def describe_started(group: Group) -> dict[str, Any]:
    """The `started` event's extra fields of a multi-rank run (rank 0)."""
    return {"world_size": group.world_size, "devices": sorted(set(group.devices)),
            "sample_devices": sorted(set(group.sample_devices)), "sharding": group.sharding}


# -- spreading the model ----------------------------------------------------------------------

def resolve_sharding(requested: str, fits_one_device: bool | None) -> str:
    """`auto` -> fsdp2 when the weights are known not to fit one device, else ddp."""
    if requested not in SHARDINGS:
        raise BadInput(f"sharding {requested!r}: choose from {', '.join(SHARDINGS)}")
    if requested != "auto":
        return requested
    return "fsdp2" if fits_one_device is False else "ddp"


def fits_one_device(spec: RunSpec, device: str) -> bool | None:
    """Whether the pair's weights fit one GPU of this machine (runners.preflight's rule);
    None on CPU or when it cannot be told."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        from runners import preflight
        from runners.models import catalog

        _, card = catalog.resolve(spec.family, spec.technique, spec.model)
        memory = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return preflight.fit_problem(spec.family, spec.technique, card, device, memory,
                                     dict(spec.params)) is None
    except Exception:  # noqa: BLE001 - unknown: auto keeps ddp
        return None


def _blocks(model: Any) -> list[Any]:
    """The repeated blocks of a model: its largest nn.ModuleList by parameter count."""
    from torch import nn

    best: list[Any] = []
    best_params = -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            count = sum(p.numel() for p in module.parameters())
            if count > best_params:
                best, best_params = list(module), count
    return best


def shard(model: Any, group: Group | None) -> Any:
    """Under fsdp2: `fully_shard` every block, then `model` as the root, in place (before
    the optimizer is made: FSDP2 replaces the parameters with sharded DTensors). Returns
    `model`; a no-op for one device or ddp."""
    if group is None or group.sharding != "fsdp2":
        return model
    from torch.distributed.fsdp import fully_shard

    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    group.root = model
    return model


def wrap_ddp(model: Any, group: Group | None) -> Any:
    """`model` under DistributedDataParallel for ddp (a module that is already sharded, or
    a one-device run, comes back as it is)."""
    if group is None or group.sharding != "ddp":
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = None if group.device == "cpu" else [int(group.device.partition(":")[2])]
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip DDP's gradient all-reduce on every micro-batch but a step's last."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()  # type: ignore[no-any-return]


@contextlib.contextmanager
def gathered() -> Iterator[None]:
    """Under fsdp2, the root's parameters unsharded for a forward that does not go through
    the root module (evaluation); nothing otherwise."""
    root = _GROUP.root if _GROUP is not None else None
    if root is None:
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def loss_forward(model: Any, group: Group | None) -> Callable[..., Any]:
    """Pretraining's `model.forward_loss` through DDP or FSDP2's root (whose hooks run on a
    module call): an adapter module whose forward is forward_loss."""
    if group is None:
        return model.forward_loss  # type: ignore[no-any-return]
    from torch import nn

    class LossForward(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, inputs: Any, targets: Any, chunk_rows: int | None = None) -> Any:
            return self.inner.forward_loss(inputs, targets, chunk_rows=chunk_rows)

    adapter = LossForward(model)
    if group.sharding == "fsdp2":
        shard_blocks = _blocks(model)
        from torch.distributed.fsdp import fully_shard

        for block in shard_blocks:
            fully_shard(block)
        fully_shard(adapter)
        group.root = adapter
        wrapped: Any = adapter
    else:
        wrapped = wrap_ddp(adapter, group)

    def call(inputs: Any, targets: Any, *, chunk_rows: int | None = None) -> Any:
        return wrapped(inputs, targets, chunk_rows)

    return call


def plain(t: Any) -> Any:
    """A tensor as one ordinary tensor: FSDP2's DTensors (e.g. the gradient norm that
    clip_grad_norm_ returns over sharded parameters) gathered whole; anything else as is."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def data_seed(seed: int) -> int:
    """The seed of this rank's data order: each rank reads other rows (the global batch)."""
    return seed + (_GROUP.rank if _GROUP is not None else 0)


def warn(message: str) -> None:
    print(f"distributed: {message}", file=sys.stderr, flush=True)
