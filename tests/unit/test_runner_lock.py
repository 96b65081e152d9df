"""The per-device lock: exclusive, waits with a notice, named per device."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from runners.system.lock import DeviceLock, lock_name, lock_path


def test_names() -> None:
    assert lock_name("cpu") == "cpu.lock"
    assert lock_name("cuda:0") == "cuda0.lock"
    assert lock_path(Path("/h"), "cuda:1") == Path("/h/locks/cuda1.lock")


def test_second_holder_waits_until_release(tmp_path: Path) -> None:
    first = DeviceLock(tmp_path, "cpu")
    first.acquire()
    assert first.held and first.waited_s == 0.0
    waited = threading.Event()
    second = DeviceLock(tmp_path, "cpu")
    t = threading.Thread(target=second.acquire, kwargs={"on_wait": waited.set})
    t.start()
    assert waited.wait(5)
    time.sleep(0.2)
    assert not second.held
    first.release()
    t.join(5)
    assert second.held and second.waited_s >= 0.2
    second.release()


def test_devices_do_not_share_a_lock(tmp_path: Path) -> None:
    cpu, gpu = DeviceLock(tmp_path, "cpu"), DeviceLock(tmp_path, "cuda:0")
    cpu.acquire(on_wait=lambda: (_ for _ in ()).throw(AssertionError("waited")))
    gpu.acquire(on_wait=lambda: (_ for _ in ()).throw(AssertionError("waited")))
    cpu.release()
    gpu.release()
