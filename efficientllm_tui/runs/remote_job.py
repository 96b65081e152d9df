"""A Ray job's entrypoint on a cluster node: run one spec there, stream its events, and send
its run dir and samples back through the job's own log.

`python -m efficientllm_tui.runs.remote_job SPEC_BASE64` (efficientllm_tui.runs.ray_jobs
submits it). Why the log: it is the one channel the Ray Jobs API carries from any node back
to the submitter with no shared file system and no extra service. Each event line of the
runner goes out as `@@efficientllm event <json>` as it is written (the submitter shows the
run live); at the end the run dir (spec, events, stderr) and this node's spool segments of
the run go out as a base64 tar.gz in `@@efficientllm archive <chunk>` lines. The node's
profiling daemon is started here, in a private data dir, and stopped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from efficientllm_tui.runs import rundir
from profiling import home as homes
from runners.protocol import RunSpec

EVENT_MARK = "@@efficientllm event "
ARCHIVE_MARK = "@@efficientllm archive "
END_MARK = "@@efficientllm end"
CHUNK = 76 * 64
KEPT = ("spec.json", "events.jsonl", "stderr.log", "stdout.log")


def pack(run_dir: Path, spool: Path) -> bytes:
    """The run dir's files of KEPT and the spool dir, as tar.gz bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in KEPT:
            if (run_dir / name).is_file():
                tar.add(run_dir / name, arcname=name)
        if spool.is_dir():
            tar.add(spool, arcname="spool")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m efficientllm_tui.runs.remote_job SPEC_BASE64", file=sys.stderr)
        return 2
    spec = RunSpec.from_json(base64.b64decode(args[0]).decode("utf-8"))
    home = Path(tempfile.mkdtemp(prefix="efficientllm-job-"))
    os.environ["EFFICIENTLLM_HOME"] = str(home)
    from profiling.daemon import client

    try:
        try:
            client.ensure_daemon(home, idle_exit_s=60.0)
        except client.DaemonError as e:
            print(f"remote_job: no profiling daemon: {e}", file=sys.stderr)
        run_dir = rundir.prepare(spec, home)
        proc = rundir.spawn(run_dir)
        tail = rundir.EventTail(run_dir)
        while True:
            done = proc.poll() is not None
            for event in tail.poll():
                print(EVENT_MARK + event.to_json(), flush=True)
            if done:
                break
            time.sleep(0.2)
        with contextlib.suppress(Exception):
            client.stop_daemon(home)
        data = base64.b64encode(pack(run_dir, homes.spool_dir(home))).decode("ascii")
        for i in range(0, len(data), CHUNK):
            print(ARCHIVE_MARK + data[i:i + CHUNK])
        print(END_MARK, flush=True)
        return 0 if proc.returncode == 0 else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
