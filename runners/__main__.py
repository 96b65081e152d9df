"""`python -m runners RUN_DIR`: run RUN_DIR/spec.json, reporting through RUN_DIR/events.jsonl.

The process contract (DESIGN.md section 3): the launcher starts this detached with output
to files and only ever reads the run dir. So everything a user or the ingest needs is an
event: `started` first, `phase`/`step`/`window` while running, and exactly one ending:
`result` (ok), or `error` (for an OOM, `error` then a `result` with status `oom`).
Exit code 0 ok, 1 the run failed (oom, crash, unsupported, cancelled), 2 bad input.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

# Triton keeps its autotuning results (gemlite's, liger's and flash-linear-attention's
# kernels) in its on-disk cache, so a repeat of a run does not tune again; set before any
# Triton import. Tuning always happens before a measured window opens.
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")

from runners.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput, Cancelled, RunnerError, classify
from runners.protocol import (
    EVENTS_FILE,
    PID_FILE,
    SPEC_FILE,
    Event,
    ProtocolError,
    RunResult,
    RunSpec,
)
from runners.system.eventlog import EventLog

if TYPE_CHECKING:
    from profiling.backends.contention import ContentionWatch

USAGE = "usage: python -m runners RUN_DIR"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _cancel(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(signal.Signals(signum).name)


def _arm_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _cancel)
    # Detached from any terminal; a stray hangup must not end a measurement.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _disarm_signals() -> None:
    """From here on the run is reporting its end; a late SIGTERM must not cut that short."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _offline_env() -> None:
    # Everything is local (DESIGN.md section 7): never reach for the hub, keep stderr.log
    # for real problems rather than library chatter.
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("HF_HUB_DISABLE_TELEMETRY", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def write_pid_file(run_dir: Path) -> None:
    """runner.pid: {"pid", "create_time" (psutil's, epoch s), "started_ns"}, written atomically.

    The start time lets a reader tell this process from a later one that reuses the pid.
    """
    create_time: float | None
    try:
        import psutil

        create_time = psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: the pid alone must do
        create_time = None
    data = {"pid": os.getpid(), "create_time": create_time, "started_ns": time.time_ns()}
    tmp = run_dir / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / PID_FILE)


def _read_spec(run_dir: Path) -> RunSpec:
    path = run_dir / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return RunSpec.from_json(text)


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _watch(home: Path, run_id: str, simulate_gpu: bool, pid: int | None = None) -> bool:
    """Ask the profiling daemon to watch this process (or `pid`: torchrun's, whose tree
    holds every rank); best effort, never fails the run. Only a run that asked for
    simulated GPUs gets them (profiling.daemon.service says why)."""
    try:
        from profiling.daemon import client

        return bool(client.watch(home, pid or os.getpid(), run_id, simulate_gpu=simulate_gpu))
    except Exception:  # a missing or broken daemon costs live samples, not the run
        return False


def _start_contention(device: str) -> tuple[ContentionWatch | None, dict[str, Any]]:
    """Start reading the run's GPU process list through the run (DESIGN.md section 3: a
    run that shares its GPU is `contended`; the rule is in profiling/contention.py).

    Returns (watch, info): the watch is None on CPU or when NVML cannot be used, and info
    then says why the verdict is unknown. Never raises.
    """
    from profiling.backends import contention

    if not device.startswith("cuda"):
        return None, contention.unknown_report("a CPU run: there is no GPU process list")
    try:
        return contention.watch_device(device), {}
    except Exception as e:  # noqa: BLE001 - knowing about neighbours must never fail a run
        return None, contention.unknown_report(
            f"the GPU's process list cannot be read: {type(e).__name__}: {e}")


def _stop_contention(watch: ContentionWatch | None, info: dict[str, Any]) -> dict[str, Any]:
    """The contention info keys of the run; stops the watch's thread. Never raises."""
    if watch is None:
        return info
    try:
        return dict(watch.stop())
    except Exception as e:  # noqa: BLE001
        from profiling.backends import contention

        return contention.unknown_report(f"reading the GPU's processes failed: {e}")


def execute(run_dir: Path, log: EventLog) -> int:
    """Run the spec in `run_dir`; every outcome becomes events. Returns the exit code."""
    from runners import distributed
    from runners.families.base import Family, RunContext, family_class, sample_device
    from runners.models import catalog
    from runners.system import device as dev
    from runners.system.lock import DeviceLock

    home = run_dir.parent.parent
    spec: RunSpec | None = None
    family: Family[Any] | None = None
    device: str | None = None
    locks: list[DeviceLock] = []
    group: distributed.Group | None = None
    watch: ContentionWatch | None = None
    contention: dict[str, Any] = {}
    try:
        spec = _read_spec(run_dir)
        device = dev.resolve(spec.device)
        group = distributed.join(spec, device)  # several ranks: runners.distributed
        if group is not None:
            device = group.device
            group.sample_devices = group.gather(sample_device(device))
            group.sharding = distributed.resolve_sharding(
                str(spec.params.get("sharding", "auto")),
                distributed.fits_one_device(spec, device))
        dev.make_current(device)
        log.emit(Event.started(
            pid=os.getpid(), host=dev.host(), device=device, versions=dev.versions(),
            run_id=spec.run_id, family=spec.family, technique=spec.technique, model=spec.model,
            sample_device=sample_device(device), gpu_name=dev.gpu_name(device),
            cpu_count=os.cpu_count(), simulate_gpu=spec.simulate_gpu,
            **(distributed.describe_started(group) if group is not None else {})))

        family_cls = family_class(spec.family)
        _, card = catalog.resolve(spec.family, spec.technique, spec.model)
        family_cls.check_technique(spec.technique)
        config = family_cls.config_type.from_spec(spec, device)
        ctx = RunContext(spec, run_dir, home, device, log)
        ctx.dist = group
        family = family_cls(config, card, ctx)
        family.validate()

        # Rank 0 holds the lock of every device of the run; the other ranks wait for it.
        for locked in (distributed.run_devices(device, spec.world_size)
                       if group is None or group.main else []):
            lock = DeviceLock(home, locked)
            locks.append(lock)
            lock.acquire(on_wait=lambda lock=lock, locked=locked: ctx.phase(
                "waiting_for_lock", device=locked, lock=str(lock.path),
                holder_pid=_lock_holder(lock.path)))
        if group is not None:
            group.barrier()
        watched = _watch(home, spec.run_id, spec.simulate_gpu,
                         None if group is None else os.getppid()) \
            if group is None or group.main else False
        watch, contention = _start_contention(device) \
            if group is None or group.main else (None, {})

        result = family.run()
        if group is not None:
            result = group.merge_result(result)
        _disarm_signals()
        contention, watch = _stop_contention(watch, contention), None
        result = replace(result, info={**result.info,
                                       "lock_wait_s": sum(lk.waited_s for lk in locks),
                                       **contention, "profiler_watched": watched,
                                       "simulate_gpu": spec.simulate_gpu, "seed": spec.seed})
        ctx.phase("done")
        log.emit(Event.result(result))
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - every ending must become an event
        _disarm_signals()
        error_type, message, code = classify(exc)
        if not isinstance(exc, (RunnerError, Cancelled, ProtocolError)):
            traceback.print_exc(file=sys.stderr)  # a foreign failure: keep the whole story
        else:
            print(f"{error_type}: {message}", file=sys.stderr)
        log.emit(Event.error(error_type, message))
        contention, watch = _stop_contention(watch, contention), None
        if error_type == "oom" and spec is not None:
            info: dict[str, Any] = dict(family.failure_info()) if family is not None else {
                "batch_size": spec.batch_size, "seq_len": spec.seq_len}
            if device is not None:
                info.update(dev.memory_facts(device))
            info.update(contention)  # a neighbour holding memory may be why it ran out
            log.emit(Event.result(RunResult(run_id=spec.run_id, status="oom", error_type="oom",
                                            error_message=message, info=info)))
        return code
    finally:
        for held in locks:
            held.release()
        if group is not None:
            group.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    os.umask(0o077)  # events, logs and checkpoints are this user's only
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = Path(args[0]).absolute()
    if not run_dir.is_dir():
        print(f"bad_input: run dir {run_dir} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    _arm_signals()
    try:
        _offline_env()
        from runners.distributed import events_name, is_main

        log = EventLog(run_dir / events_name(EVENTS_FILE))
        if is_main():  # under torchrun, rank 0 is the run's runner
            write_pid_file(run_dir)
    except Cancelled:
        return 1
    try:
        return execute(run_dir, log)
    finally:
        log.close()


def _exit_now(code: int) -> None:
    """Exit without interpreter teardown, which costs about a second once torch and
    transformers are loaded. Every event is already on disk (one write each, with no user
    space buffer); only the standard streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
