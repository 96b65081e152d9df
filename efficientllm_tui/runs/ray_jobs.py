"""Sweeps on a Ray cluster: every pair a Ray job (Ray Jobs API: submit, logs, stop), its run
shown live here and stored in this host's database when it ends.

Why the Jobs API: Ray already schedules work over a cluster's nodes by the GPUs it needs
(`entrypoint_num_gpus`), keeps a job's log and stops it on request; we add no scheduler or
transport of our own. Each job runs efficientllm_tui.runs.remote_job on its node, which
prints the runner's events as they happen and, at the end, the run dir and the node's
samples of the run; the submitter reads the job's log through the same API, appends the
events to a local run dir (so the TUI and `efficientllm runs` show the run live, with the
node's host name from its `started` event), unpacks the archive into it and stores it
with the ordinary ingest (efficientllm_tui.runs.ingest reads a run dir's own `spool/`).
A run dir with `remote.json` belongs to its submitter: this host's dispatcher leaves it
alone; while the submitter lives the run reads as running (its `launcher.json` names the
submitter), and if the submitter dies the run reads as orphaned.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput, DatabaseLocked
from efficientllm_tui.runs import ingest, queue, rundir
from efficientllm_tui.runs.remote_job import ARCHIVE_MARK, END_MARK, EVENT_MARK
from runners.protocol import EVENTS_FILE, RunSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 0.5


@dataclass
class RemoteRun:
    """One submitted job and what its log has given so far."""

    spec: RunSpec
    run_dir: Path
    job_id: str
    seen: int = 0
    """Characters of the job's log already read."""
    archive: list[str] = field(default_factory=list)
    ended: bool = False
    status: str | None = None


def client_for(address: str) -> Any:
    """A JobSubmissionClient for `address`; BadInput when Ray is missing or unreachable."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise BadInput("--ray needs Ray: pip install 'efficientllm-tui[ray]'") from None
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - Ray's connection errors have no common base
        raise BadInput(f"cannot reach the Ray cluster at {address}: {e}") from None


def python_cmd() -> str:
    """The Python that runs the job on a node: EFFICIENTLLM_RAY_PYTHON, else this one (the
    same path on every node, as a shared image or environment gives)."""
    return os.environ.get("EFFICIENTLLM_RAY_PYTHON") or sys.executable


def submit(client: Any, spec: RunSpec, home: Path, db: Path, address: str,
           sweep_id: str | None) -> RemoteRun:
    """The local run dir of `spec` (claimed: never started here) and its Ray job."""
    run_dir = queue.enqueue(spec, home, db, sweep_id=sweep_id)
    _write(run_dir / rundir.REMOTE_FILE, {"address": address})  # the dispatcher's hands off
    queue.claim(run_dir, "start")
    payload = base64.b64encode(spec.to_json().encode("utf-8")).decode("ascii")
    gpus = spec.world_size if spec.device != "cpu" else 0
    job_id = client.submit_job(
        entrypoint=f"{python_cmd()} -m efficientllm_tui.runs.remote_job {payload}",
        submission_id=f"efficientllm-{spec.run_id}", entrypoint_num_gpus=gpus,
        entrypoint_num_cpus=1, metadata={"efficientllm_run_id": spec.run_id})
    _write(run_dir / rundir.REMOTE_FILE, {"address": address, "job_id": job_id,
                                          "submitted_ns": time.time_ns(), "gpus": gpus})
    _write(run_dir / rundir.LAUNCHER_FILE, {"pid": os.getpid(), "spawned_ns": time.time_ns(),
                                            "create_time": _create_time()})
    return RemoteRun(spec, run_dir, job_id)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _create_time() -> float | None:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001
        return None


def read_log(client: Any, run: RemoteRun) -> None:
    """Take the job's new complete log lines: events go to the run dir at once."""
    text = client.get_job_logs(run.job_id)
    new = text[run.seen:]
    cut = new.rfind("\n")
    if cut < 0:
        return
    run.seen += cut + 1
    with open(run.run_dir / EVENTS_FILE, "a", encoding="utf-8") as events:
        for line in new[:cut].splitlines():
            if line.startswith(EVENT_MARK):
                events.write(line[len(EVENT_MARK):] + "\n")
            elif line.startswith(ARCHIVE_MARK):
                run.archive.append(line[len(ARCHIVE_MARK):])
            elif line.startswith(END_MARK):
                run.ended = True


def finish(run: RemoteRun, store: Any, home: Path) -> str:
    """Unpack what the job sent back and store the run; its stored status."""
    if run.ended and run.archive:
        data = base64.b64decode("".join(run.archive))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(run.run_dir, filter="data")  # the node's own events replace ours
    (run.run_dir / rundir.LAUNCHER_FILE).unlink(missing_ok=True)  # no runner here any more
    for _ in range(60):
        try:
            return ingest.ingest_run(store, run.run_dir, home, alive=False).status
        except DatabaseLocked:
            time.sleep(1.0)
    raise DatabaseLocked(f"{store.path} stayed locked; run {run.spec.run_id} is safe in "
                         f"{run.run_dir} (`efficientllm recover` stores it)", "Database locked")


def cmd(address: str, specs: list[RunSpec], home: Path, store: Any, sweep_id: str,
        *, timeout_s: float | None, as_json: bool, id_key: str = "sweep_id") -> int:
    """`sweep|study ... --ray ADDRESS`: run every spec on the cluster; exit 0 when all are
    stored ok, 1 when one is not."""
    if timeout_s is not None and timeout_s <= 0:
        raise BadInput(f"--ray-timeout must be positive seconds, got {timeout_s}")
    done = run_specs(address, specs, home, store, sweep_id, timeout_s=timeout_s,
                     show=not as_json)
    if as_json:
        print(json.dumps({id_key: sweep_id, "ray": address,
                          "runs": [{"run_id": r, "status": s} for r, s in done]}))
    else:
        ok = sum(s == "ok" for _, s in done)
        print(f"{sweep_id}: {ok}/{len(done)} run(s) ok on {address}")
    return 0 if all(s == "ok" for _, s in done) else 1


def run_specs(address: str, specs: list[RunSpec], home: Path, store: Any,
              sweep_id: str | None, *, timeout_s: float | None = None,
              show: bool = True) -> list[tuple[str, str]]:
    """Submit every spec as a Ray job, follow them all, store each as it ends.

    Returns (run_id, stored status) per spec. Ctrl-C or `timeout_s` stops the jobs still
    going (they are stored as they ended).
    """
    client = client_for(address)
    runs = [submit(client, spec, home, store.path, address, sweep_id) for spec in specs]
    if show:
        print(f"submitted {len(runs)} Ray job(s) to {address}", file=sys.stderr, flush=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out: dict[str, str] = {}
    try:
        while len(out) < len(runs):
            if deadline is not None and time.monotonic() > deadline:
                _stop(client, [r for r in runs if r.spec.run_id not in out], "timed out")
                deadline = None
            for run in runs:
                if run.spec.run_id in out:
                    continue
                status = str(client.get_job_status(run.job_id)).rsplit(".", 1)[-1]
                read_log(client, run)
                if status in TERMINAL:
                    read_log(client, run)
                    out[run.spec.run_id] = finish(run, store, home)
                    if show:
                        print(f"  {run.spec.run_id}: job {status.lower()}, stored "
                              f"{out[run.spec.run_id]}", file=sys.stderr, flush=True)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _stop(client, [r for r in runs if r.spec.run_id not in out], "interrupted")
        raise
    return [(r.spec.run_id, out[r.spec.run_id]) for r in runs]


def _stop(client: Any, runs: list[RemoteRun], why: str) -> None:
    for run in runs:
        try:
            client.stop_job(run.job_id)
        except Exception as e:  # noqa: BLE001 - a job that ended meanwhile
            print(f"  {run.spec.run_id}: stop failed: {e}", file=sys.stderr)
        print(f"  {run.spec.run_id}: {why}, job stopped", file=sys.stderr, flush=True)
