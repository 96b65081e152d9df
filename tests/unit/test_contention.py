"""Contention: the run's GPU process list read through the run (tests/unit/nvml_fake.py's
pynvml), pids told apart across pid namespaces, the verdict and its note."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from profiling.backends import contention, nvml
from profiling.backends.contention import Contention, ContentionWatch, ProcessView, ViewError
from profiling.backends.nvml_types import GpuProcess
from tests.unit import nvml_fake
from tests.unit.nvml_fake import GIB, REAL, Fake, err

autospec = nvml_fake.autospec  # fixtures, used by name
fake = nvml_fake.fake

OWN = 5000
HOST_A, HOST_B = 3_100_001, 3_100_002  # pids of the host's namespace, none of ours


class FakeView(ProcessView):
    """A pid namespace by hand: our pids, the visible ones (pid -> name), our CUDA count."""

    def __init__(self, own: set[int], visible: dict[int, str] | None = None,
                 cuda: int | None = 1) -> None:
        super().__init__(root_pid=OWN)
        self._own = own
        self._visible = visible or {}
        self.cuda = cuda

    def own(self) -> set[int]:
        return set(self._own)

    def classify(self, pid: int, own: set[int]) -> str:
        return "own" if pid in own else "foreign" if pid in self._visible else "unmapped"

    def name(self, pid: int) -> str | None:
        return self._visible.get(pid)

    def cuda_processes(self, minor: int | None) -> int:
        if self.cuda is None:
            raise ViewError("cannot read the fds of this run's process 5000")
        return self.cuda


def watch(fake: Fake, view: ProcessView, interval_s: float = 0.01) -> ContentionWatch:
    reader, minor = nvml.gpu_process_reader(0)
    assert minor == 0  # the fake's /dev/nvidia<minor> is its index
    return ContentionWatch(reader, Contention("gpu0", view, minor), interval_s)


def wait_until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_no_foreign_process_is_not_contended(fake: Fake) -> None:
    fake.gpus[0].pids = [OWN]
    w = watch(fake, FakeView({OWN})).start()
    wait_until(lambda: w.contention.reads >= 3)
    info = w.stop()
    assert info["contended"] is False and info["contended_note"] is None
    assert info["foreign_processes"] == [] and info["foreign_pids"] == []
    assert not w._thread.is_alive()  # type: ignore[union-attr]
    n = fake.m.nvmlDeviceGetComputeRunningProcesses.call_count
    time.sleep(0.05)
    assert fake.m.nvmlDeviceGetComputeRunningProcesses.call_count == n  # no read after stop


def test_a_process_seen_only_mid_run_contends_with_its_memory(fake: Fake) -> None:
    g = fake.gpus[0]
    g.pids = [OWN]
    view = FakeView({OWN}, visible={4242: "python"})
    t_start = time.time_ns()
    w = watch(fake, view).start()
    g.proc_mem = {4242: int(1.2 * GIB), OWN: 3 * GIB}
    g.pids = [OWN, 4242]
    seen = w.contention.reads
    wait_until(lambda: w.contention.reads >= seen + 2)
    g.proc_mem[4242] = int(0.5 * GIB)  # less memory later: the most seen is kept
    seen = w.contention.reads
    wait_until(lambda: w.contention.reads >= seen + 2)
    g.pids = [OWN]
    seen = w.contention.reads
    wait_until(lambda: w.contention.reads >= seen + 2)
    # the old check, at the start and the end only, saw nothing
    assert nvml.foreign_processes(0, {OWN}) == []
    info = w.stop()
    t_stop = time.time_ns()
    assert info["contended"] is True and info["foreign_pids"] == [4242]
    (f,) = info["foreign_processes"]
    assert (f["pid"], f["name"], f["used_gpu_memory_bytes"], f["device"]) == \
        (4242, "python", int(1.2 * GIB), "gpu0")
    assert (f["pid_namespace"], f["identified"]) == ("this", True)
    assert t_start < f["first_seen_ns"] < f["last_seen_ns"] < t_stop
    assert info["contended_note"] is None


def test_memory_not_given_by_nvml_is_none() -> None:
    c = Contention("gpu0", FakeView({OWN}, visible={4242: "python"}))
    c.observe(10, [GpuProcess(OWN, GIB), GpuProcess(4242, None)])
    c.observe(20, [GpuProcess(OWN, GIB), GpuProcess(4242, None)])
    (f,) = c.foreign
    assert (f.used_gpu_memory_bytes, f.first_seen_ns, f.last_seen_ns) == (None, 10, 20)


def test_container_host_pids_one_entry_is_ours(fake: Fake) -> None:
    fake.gpus[0].pids = [HOST_A]
    w = watch(fake, FakeView({OWN}, cuda=1)).start()
    info = w.stop()
    assert info["contended"] is False and info["foreign_processes"] == []
    assert "another pid namespace" in info["contended_note"]


def test_container_host_pids_two_entries_contend_with_a_note(fake: Fake) -> None:
    g = fake.gpus[0]
    g.pids, g.proc_mem = [HOST_A, HOST_B], {HOST_A: 2 * GIB, HOST_B: GIB}
    info = watch(fake, FakeView({OWN}, cuda=1)).start().stop()
    assert info["contended"] is True and info["foreign_pids"] == [HOST_A, HOST_B]
    assert [(f["pid"], f["used_gpu_memory_bytes"], f["name"], f["pid_namespace"],
             f["identified"]) for f in info["foreign_processes"]] == \
        [(HOST_A, 2 * GIB, None, "other", False), (HOST_B, GIB, None, "other", False)]
    note = info["contended_note"]
    assert "another pid namespace" in note and "which cannot be told" in note


def test_host_pid_there_before_our_context_is_the_foreign_one() -> None:
    view = FakeView({OWN}, cuda=0)
    c = Contention("gpu0", view)
    c.observe(10, [GpuProcess(HOST_B, GIB)])  # no CUDA process of ours yet: not ours
    view.cuda = 1
    c.observe(20, [GpuProcess(HOST_A, 3 * GIB), GpuProcess(HOST_B, GIB)])  # ours appears
    c.observe(30, [GpuProcess(HOST_A, 3 * GIB)])  # the neighbour leaves
    assert c.verdict()[0] is True
    assert [(f.pid, f.identified, f.first_seen_ns, f.last_seen_ns) for f in c.foreign] == \
        [(HOST_B, True, 10, 20)]


def test_unmapped_pids_we_cannot_count_give_unknown() -> None:
    c = Contention("gpu0", FakeView({OWN}, cuda=None))
    c.observe(10, [GpuProcess(HOST_A, GIB)])
    contended, note = c.verdict()
    assert contended is None
    assert note is not None and note.startswith("1 of 1 reads undecided: 1 process(es) with "
                                                "pids from another pid namespace")
    # fewer unmapped entries than our CUDA processes, but some: cannot be decided either
    c = Contention("gpu0", FakeView({OWN}, cuda=2))
    c.observe(10, [GpuProcess(HOST_A, GIB)])
    assert c.verdict()[0] is None and c.report()["foreign_processes"] == []


def test_process_list_not_supported_is_unknown(fake: Fake) -> None:
    fake.m.nvmlDeviceGetComputeRunningProcesses.side_effect = err(REAL.NVML_ERROR_NOT_SUPPORTED)
    fake.m.nvmlDeviceGetGraphicsRunningProcesses.side_effect = err(REAL.NVML_ERROR_NOT_SUPPORTED)
    info = watch(fake, FakeView({OWN})).start().stop()
    assert info["contended"] is None and info["foreign_processes"] is None
    assert info["contended_note"] == "this driver does not list the processes on the GPU"
    assert info["foreign_pids"] == [] and info["contention_reads"] >= 2


def test_one_failed_read_makes_a_clean_run_unknown_not_false() -> None:
    reads = iter([[GpuProcess(OWN, GIB)], RuntimeError("GPU busy"), [GpuProcess(OWN, GIB)]])

    def reader() -> list[GpuProcess]:
        r = next(reads)
        if isinstance(r, Exception):
            raise r
        return r

    w = ContentionWatch(reader, Contention("gpu0", FakeView({OWN})), interval_s=60)
    for _ in range(3):
        w.read_once()
    assert w.contention.report()["contended"] is None
    assert w.contention.verdict()[1] == \
        "1 of 3 process-list reads failed (last: RuntimeError: GPU busy)"


def test_our_own_child_process_is_not_foreign(fake: Fake) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = psutil.Process().pid
        fake.gpus[0].pids = [me, child.pid]
        assert nvml.foreign_processes(0, {me}) == [child.pid]  # the old, pid-only check
        info = watch(fake, ProcessView()).start().stop()
        assert info["contended"] is False and info["foreign_processes"] == []
        # the same pid seen from a run rooted elsewhere (the child) is foreign: we are not
        # its descendant
        info = watch(fake, ProcessView(root_pid=child.pid)).start().stop()
        assert info["contended"] is True and info["foreign_pids"] == [me]
        assert info["foreign_processes"][0]["name"] == psutil.Process(me).name()
    finally:
        child.kill()
        child.wait()


def test_nspid_aliases_make_a_pid_ours(tmp_path: Path) -> None:
    # /proc of an outer namespace: pid 4242 there is pid 7 in ours
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "status").write_text("Name:\tpython\nNSpid:\t4242\t7\n")
    (tmp_path / "4343").mkdir()
    (tmp_path / "4343" / "status").write_text("Name:\tpython\nNSpid:\t4343\t8\n")
    view = ProcessView(proc=str(tmp_path))
    assert view.classify(4242, {7}) == "own"
    assert view.classify(4343, {7}) == "foreign"  # visible, fds unreadable: not ours
    assert view.classify(4444, {7}) == "unmapped"  # not in this /proc at all


def test_a_broken_reader_or_view_never_raises() -> None:
    class Broken(FakeView):
        def classify(self, pid: int, own: set[int]) -> str:
            raise OSError("proc vanished")

    w = ContentionWatch(lambda: [GpuProcess(9, None)], Contention("gpu0", Broken({OWN})),
                        interval_s=60)
    w.read_once()
    assert w.contention.report()["contended"] is None
    assert "attribution failed: OSError: proc vanished" in w.contention.verdict()[1]


def test_cpu_report_says_why() -> None:
    assert contention.unknown_report("a CPU run") == {
        "contended": None, "contended_note": "a CPU run", "foreign_processes": None,
        "foreign_pids": [], "contention_reads": 0}


def test_the_thread_is_named_and_stops(fake: Fake) -> None:
    fake.gpus[0].pids = []
    w = watch(fake, FakeView({OWN})).start()
    assert any(t.name == "contention" for t in threading.enumerate())
    assert w.stop()["contended"] is False
    assert not any(t.name == "contention" and t.is_alive() for t in threading.enumerate())


def test_reads_with_the_same_pids_reuse_their_attribution(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    view = FakeView({OWN}, visible={4242: "python"})
    calls = []
    real = view.own
    monkeypatch.setattr(view, "own", lambda: calls.append(1) or real())
    c = Contention("gpu0", view)
    for t in range(5):
        c.observe(t, [GpuProcess(OWN, GIB), GpuProcess(4242, GIB)])
    assert len(calls) == 1 and c.reads == 5 and c.foreign[0].last_seen_ns == 4


def _proc(tmp_path: Path, maps: dict[int, list[str]], nvml_open: bool = True) -> ProcessView:
    """A /proc by hand: our fds (NVML holds /dev/nvidiactl open) and each pid's maps."""
    fd = tmp_path / "self" / "fd"
    fd.mkdir(parents=True)
    if nvml_open:
        (fd / "3").symlink_to("/dev/nvidiactl")
    for pid, paths in maps.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "maps").write_text("".join(
            f"7f00{i:08x}-7f01{i:08x} rw-s 00000000 00:05 {i} {p}\n"
            for i, p in enumerate(paths)))
    view = ProcessView(root_pid=10, proc=str(tmp_path))
    view.own_tree = lambda: set(maps)  # type: ignore[method-assign]
    return view


def test_cuda_processes_are_those_with_a_context_mapped(tmp_path: Path) -> None:
    # seen on an H100: a context maps uvm and the GPU's node; cuInit alone maps no uvm;
    # NVML alone maps nothing
    view = _proc(tmp_path, {10: ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"],
                            11: ["/dev/nvidiactl", "/dev/nvidia0"],
                            12: ["/usr/lib/libc.so.6"]})
    assert view.cuda_processes(0) == 1
    assert view.cuda_processes(1) == 0  # a context on another GPU is not one on this
    (tmp_path / "12" / "maps").unlink()
    (tmp_path / "12").rmdir()
    assert view.cuda_processes(0) == 1  # a process that ended meanwhile is not counted
    (tmp_path / "11" / "maps").unlink()
    with pytest.raises(ViewError, match="cannot read the memory maps of this run's process 11"):
        view.cuda_processes(0)


def test_cuda_processes_unknown_where_device_names_cannot_be_trusted(tmp_path: Path) -> None:
    view = _proc(tmp_path, {10: ["/dev/nvidia0", "/dev/nvidia-uvm"]}, nvml_open=False)
    with pytest.raises(ViewError, match="no /dev/nvidiactl although it has NVML open"):
        view.cuda_processes(0)
