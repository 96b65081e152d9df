"""Contention on a real GPU: this process and its CUDA children are ours, a CUDA process
outside our tree is foreign, and the counting rule for host pids holds on real maps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiling.backends import contention, nvml
from profiling.backends.contention import Contention, ContentionWatch, ProcessView

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]
torch = pytest.importorskip("torch")
HOLD = "import torch, sys, time; x = torch.ones(1 << 24, device='cuda:0'); " \
       "torch.cuda.synchronize(); open(sys.argv[1], 'w').close(); time.sleep(20)"


class HostPids(ProcessView):
    """As a container seeing host pids would: no NVML pid is found in our /proc."""

    def classify(self, pid: int, own: set[int]) -> str:
        return "unmapped"


@pytest.fixture
def index() -> int:
    """The NVML index of cuda:0, once only this process is left on it (a process killed by
    an earlier test leaves NVML's list a moment later)."""
    torch.zeros(1, device="cuda:0")  # create the context, so this process is on the GPU
    index = nvml.nvml_index_for_cuda(0)
    reader, _ = nvml.gpu_process_reader(index)
    deadline = time.monotonic() + 30
    while len(reader()) != 1:
        assert time.monotonic() < deadline, f"other processes on the GPU: {reader()}"
        time.sleep(0.1)
    return index


def _wait(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, "the CUDA process never got ready"
        time.sleep(0.05)


def _child(tmp_path: Path) -> subprocess.Popen[bytes]:
    ready = tmp_path / "child-ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ready)])
    _wait(ready)
    return proc


def _stranger(tmp_path: Path) -> int:
    """A CUDA process that is not our descendant (its parent exits at once)."""
    ready, pid_file = tmp_path / "stranger-ready", tmp_path / "stranger.pid"
    subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{HOLD}" "{ready}" >/dev/null 2>&1 & '
                    f'echo $! > "{pid_file}"'], check=True)
    _wait(ready)
    return int(pid_file.read_text())


def test_alone_and_with_our_own_cuda_child_is_not_contended(index: int, tmp_path: Path
                                                            ) -> None:
    info = contention.watch_device("cuda:0", interval_s=0.1).stop()
    assert info["contended"] is False and info["foreign_processes"] == []
    child = _child(tmp_path)
    try:
        info = contention.watch_device("cuda:0", interval_s=0.1).stop()
        assert info["contended"] is False, info
        assert ProcessView().cuda_processes(nvml.gpu_process_reader(index)[1]) == 2
    finally:
        child.kill()
        child.wait()


def test_a_stranger_is_foreign_with_its_name_and_memory(index: int, tmp_path: Path) -> None:
    w = contention.watch_device("cuda:0", interval_s=0.1)
    pid = _stranger(tmp_path)
    try:
        time.sleep(0.3)
        info = w.stop()
    finally:
        os.kill(pid, 9)
    assert info["contended"] is True and info["foreign_pids"] == [pid]
    (f,) = info["foreign_processes"]
    assert f["name"].startswith("python") and f["pid_namespace"] == "this"
    assert f["used_gpu_memory_bytes"] is None or f["used_gpu_memory_bytes"] >= 64 * 2**20


def test_counting_rule_on_real_maps_as_if_pids_were_the_hosts(index: int, tmp_path: Path
                                                              ) -> None:
    reader, minor = nvml.gpu_process_reader(index)
    alone = ContentionWatch(reader, Contention(f"gpu{index}", HostPids(), minor), 0.1)
    info = alone.start().stop()
    assert info["contended"] is False and "another pid namespace" in info["contended_note"]
    w = ContentionWatch(reader, Contention(f"gpu{index}", HostPids(), minor), 0.1).start()
    pid = _stranger(tmp_path)  # appears after ours was claimed: identified
    try:
        time.sleep(0.3)
        info = w.stop()
    finally:
        os.kill(pid, 9)
    assert info["contended"] is True and info["foreign_pids"] == [pid]
    assert info["foreign_processes"][0]["identified"] is True
