"""`efficientllm sweep FILE --ray ADDRESS` against a real local Ray head on 127.0.0.1: a
bounded subset of the ci-tiny study as Ray jobs (Jobs API), each run streamed back, its
node's samples with it, stored in the local database marked with the node's host. Skipped
with the reason where Ray is not installed or its head cannot start."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.slow

SWEEP = """
[defaults]
device = "cpu"
steps = 2
warmup = 1

[[matrix]]
models = ["tiny"]
techniques = ["bf16", "gqa"]
new_tokens = 8
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with its dashboard (the Jobs API), stopped afterwards."""
    pytest.importorskip("ray.job_submission", reason="Ray is not installed (the `ray` extra)")
    ray = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    start = subprocess.run(
        [str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=true", f"--temp-dir={temp}",
         "--disable-usage-stats"], capture_output=True, text=True, timeout=90,
        stdin=subprocess.DEVNULL)
    try:
        if start.returncode != 0:
            pytest.skip(f"a Ray head cannot start here: {start.stderr.strip()[-300:]}")
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(temp, ignore_errors=True)


def test_sweep_on_a_local_ray_head(cli: Cli, ray_head: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    out = cli("sweep", str(path), "--ray", ray_head, "--ray-timeout", "240", "--json",
              timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ray"] == ray_head and len(doc["runs"]) == 2
    assert {r["status"] for r in doc["runs"]} == {"ok"}
    ids = [r["run_id"] for r in doc["runs"]]
    rows = cli.json("sql", "select run_id, technique, status, host, sweep_id, steps from runs "
                    "order by technique", "--format", "json")
    assert isinstance(rows, list)
    assert [(r["technique"], r["status"], r["sweep_id"]) for r in rows] == [
        ("bf16", "ok", doc["sweep_id"]), ("gqa", "ok", doc["sweep_id"])]
    assert {r["host"] for r in rows} == {socket.gethostname()}  # the node's, from its events
    for rid in ids:
        run_dir = cli.home / "runs" / rid
        remote = json.loads((run_dir / "remote.json").read_text())
        assert remote["job_id"] == f"efficientllm-{rid}" and remote["gpus"] == 0
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        assert [e["kind"] for e in events][0] == "started" and events[-1]["kind"] == "result"
        # The node's samples came back with the job and were stored with the run.
        (n,) = cli.json("sql", f"select count(*) as n from samples where run_id = '{rid}'",
                        "--format", "json")
        spooled = list((run_dir / "spool").glob("*"))
        assert spooled and n["n"] > 0
        (steps,) = cli.json("sql", f"select count(*) as n from steps where run_id = '{rid}' "
                            "and phase = 'measure'", "--format", "json")
        assert steps["n"] == 2


def test_ray_without_a_cluster_is_one_line(cli: Cli, tmp_path: Path) -> None:
    pytest.importorskip("ray.job_submission", reason="Ray is not installed (the `ray` extra)")
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    out = cli("sweep", str(path), "--ray", f"http://127.0.0.1:{_free_port()}", timeout=60)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach the Ray cluster" in \
        out.stderr
