"""Energy sources by device: RAPL power for the host backend, readers for windows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from profiling.backends import energy
from profiling.backends.base import WatchSet, load_backend
from profiling.backends.host import HostBackend, host_backend
from tests.unit.test_profiling_window import fake_zone

S = 1_000_000_000


def test_rapl_power_from_energy_deltas_across_a_wrap(tmp_path: Path) -> None:
    p0 = fake_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    read = energy.rapl_power_reader(str(tmp_path))
    assert read is not None
    assert read(10 * S) is None  # no baseline yet: unknown, not 0
    (p0 / "energy_uj").write_text("6000000\n")  # +5 J in 0.5 s
    assert read(10 * S + S // 2) == pytest.approx(10.0)
    (p0 / "energy_uj").write_text("1000000\n")  # wrapped at 10 J: +5 J in 1 s
    assert read(11 * S + S // 2) == pytest.approx(5.0)
    assert read(11 * S + S // 2) is None  # no time passed
    (p0 / "energy_uj").unlink()
    assert read(12 * S) is None
    (p0 / "energy_uj").write_text("2000000\n")
    assert read(13 * S) is None  # baseline again after a failed read


def test_rapl_status_reasons(tmp_path: Path) -> None:
    assert energy.rapl_power_reader(str(tmp_path)) is None
    ok, why = energy.rapl_status(str(tmp_path))
    assert not ok and "no RAPL package zones" in why
    zone = fake_zone(tmp_path, "intel-rapl:0", "package-0", 5, 10)
    assert energy.rapl_status(str(tmp_path)) == (True, "readable")
    if os.geteuid() != 0 and sys.platform.startswith("linux"):
        (zone / "energy_uj").chmod(0)
        ok, why = energy.rapl_status(str(tmp_path))
        assert not ok and "root-only" in why


def test_host_backend_gets_rapl_power_when_readable(tmp_path: Path) -> None:
    p0 = fake_zone(tmp_path, "intel-rapl:0", "package-0", 0, 10**9)
    b = host_backend(WatchSet(), rapl_root=str(tmp_path), host="h")
    assert isinstance(b, HostBackend) and b.status()["power"] == "rapl"
    assert b.sample(5 * S)[0].power_w is None
    (p0 / "energy_uj").write_text("30000000\n")  # +30 J over 0.2 s
    (s,) = b.sample(5 * S + S // 5)
    assert s.source == "psutil" and s.power_w == pytest.approx(150.0)
    none = host_backend(WatchSet(), rapl_root=str(tmp_path / "absent"))
    st = none.status()
    assert st["power"] is None and "no RAPL" in st["power_note"]
    assert none.sample(1)[0].power_w is None
    assert isinstance(load_backend("psutil", WatchSet()), HostBackend)


def test_energy_reader_for_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p0 = fake_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    monkeypatch.setattr(energy, "RAPL_ROOT", str(tmp_path))
    counter = energy.energy_counter("cpu")
    reader = counter.reader
    assert counter.source == "rapl" and reader is not None and reader() == 0.0
    (p0 / "energy_uj").write_text("3000000\n")
    assert reader() == pytest.approx(2.0)
    monkeypatch.setattr(energy, "RAPL_ROOT", str(tmp_path / "none"))
    none = energy.energy_counter("cpu")
    assert (none.reader, none.source) == (None, None)
    assert none.note == (f"no CPU energy counter: no RAPL package zones under {tmp_path / 'none'}"
                         " (no RAPL on this CPU or VM)")
    assert energy.sample_device_for("cpu") == "cpu"
    assert energy.sample_device_for("mps") == "mps"
