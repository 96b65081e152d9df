"""Measurement windows (sync and energy at both edges, nesting, resets) and the RAPL reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiling.window import WindowMeter, rapl_energy_reader


class Rig:
    """A fake device: records the order of sync, clock and counter reads."""

    def __init__(self, energies: list[float | None]) -> None:
        self.calls: list[str] = []
        self.energies = list(energies)
        self.t = 1_000

    def sync(self) -> None:
        self.calls.append("sync")

    def clock(self) -> int:
        self.calls.append("clock")
        self.t += 1_000_000_000
        return self.t

    def mono(self) -> int:
        return self.t  # same steps as the wall clock here

    def energy(self) -> float | None:
        self.calls.append("energy")
        return self.energies.pop(0)

    def meter(self, **kw: object) -> WindowMeter:
        return WindowMeter(self.sync, self.energy, "gpu0", "nvml", clock_ns=self.clock,
                           mono_ns=self.mono, **kw)  # type: ignore[arg-type]


def test_sync_before_clock_and_energy_at_both_edges() -> None:
    rig = Rig([100.0, 350.0])
    meter = rig.meter()
    meter.begin("decode")
    assert rig.calls == ["sync", "clock", "energy"]
    res = meter.end("decode")
    assert rig.calls == ["sync", "clock", "energy"] * 2
    assert res.name == "decode" and res.device == "gpu0" and res.energy_source == "nvml"
    assert res.energy_j == 250.0
    assert res.t1_ns - res.t0_ns == 1_000_000_000
    assert res.elapsed_s == 1.0
    assert res.mean_power_w == 250.0
    assert res.energy_note is None


def test_nesting_and_name_errors() -> None:
    rig = Rig([0.0, 10.0, 30.0, 100.0])
    meter = rig.meter()
    meter.begin("run")
    meter.begin("step")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("step")
    assert sorted(meter.open_windows) == ["run", "step"]
    inner = meter.end("step")
    outer = meter.end("run")
    assert (inner.energy_j, outer.energy_j) == (20.0, 100.0)
    assert outer.t0_ns < inner.t0_ns < inner.t1_ns < outer.t1_ns
    with pytest.raises(ValueError, match="no open window"):
        meter.end("run")
    with pytest.raises(ValueError):
        meter.end("never")


def test_counter_reset_gives_none_with_reason() -> None:
    rig = Rig([5000.0, 12.0])
    meter = rig.meter()
    meter.begin("w")
    res = meter.end("w")
    assert res.energy_j is None
    assert res.energy_note is not None and "reset" in res.energy_note


def test_counter_wrap_uses_modulus() -> None:
    rig = Rig([990.0, 15.0])
    meter = rig.meter(wrap_j=1000.0)
    meter.begin("w")
    res = meter.end("w")
    assert res.energy_j == pytest.approx(25.0)
    assert res.energy_note is not None and "wrapped" in res.energy_note


def test_unreadable_and_failing_counter() -> None:
    rig = Rig([None, 5.0])
    meter = rig.meter()
    meter.begin("w")
    res = meter.end("w")
    assert res.energy_j is None and res.energy_note == "energy counter unreadable"

    def broken() -> float:
        raise OSError("gone")

    meter = WindowMeter(None, broken, "gpu0", "nvml")
    meter.begin("w")
    res = meter.end("w")
    assert res.energy_j is None and "OSError" in (res.energy_note or "")


def test_no_counter_no_sync() -> None:
    meter = WindowMeter(None, None, "cpu", "rapl")
    meter.begin("w")
    res = meter.end("w")
    assert res.energy_j is None and res.energy_source is None
    assert res.energy_note == "no energy counter on this device"
    assert res.t1_ns >= res.t0_ns and res.elapsed_s >= 0
    told = WindowMeter(None, None, "cpu", None, no_counter_note="no RAPL package zones")
    told.begin("w")
    assert told.end("w").energy_note == "no RAPL package zones"


def test_a_counter_that_did_not_advance_is_no_reading() -> None:
    # Zero joules would rank as the best energy ever measured: it is None, with the reason.
    rig = Rig([500.0, 500.0])
    meter = rig.meter()
    meter.begin("train")
    res = meter.end("train")
    assert res.energy_j is None and res.mean_power_w is None
    assert res.energy_note == ("the nvml counter did not advance over this 1.000 s window "
                               "(shorter than its update period); measure more steps for energy")


def test_measure_sets_result_and_closes_on_error() -> None:
    rig = Rig([1.0, 2.0, 3.0, 7.0])
    meter = rig.meter()
    with meter.measure("a") as w:
        assert w.result is None
    assert w.result is not None and w.result.energy_j == 1.0
    with pytest.raises(RuntimeError), meter.measure("b") as w2:
        raise RuntimeError("step failed")
    assert w2.result is not None and w2.result.energy_j == 4.0
    assert meter.open_windows == []
    fields = w.result.to_dict()
    assert {"name", "t0_ns", "t1_ns", "device", "energy_j", "energy_source"} <= set(fields)


def fake_zone(root: Path, name: str, label: str, energy: int | None, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir()
    (zone / "name").write_text(label + "\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    if energy is not None:
        (zone / "energy_uj").write_text(f"{energy}\n")
    return zone


def test_rapl_sums_packages_and_handles_wrap(tmp_path: Path) -> None:
    p0 = fake_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    p1 = fake_zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000, 10_000_000)
    fake_zone(tmp_path, "intel-rapl:0:0", "core", 999, 10_000_000)
    fake_zone(tmp_path, "intel-rapl:2", "psys", 999, 10_000_000)
    read = rapl_energy_reader(str(tmp_path))
    assert read is not None
    assert read() == 0.0
    (p0 / "energy_uj").write_text("3000000\n")  # +2 J
    (p1 / "energy_uj").write_text("6000000\n")  # +1 J
    assert read() == pytest.approx(3.0)
    (p0 / "energy_uj").write_text("500000\n")  # wrapped: +7.5 J
    assert read() == pytest.approx(10.5)
    (p1 / "energy_uj").unlink()
    assert read() is None


def test_rapl_absent_or_unreadable(tmp_path: Path) -> None:
    assert rapl_energy_reader(str(tmp_path / "nothing")) is None
    fake_zone(tmp_path, "intel-rapl:0", "package-0", None, 10)  # energy_uj not readable
    assert rapl_energy_reader(str(tmp_path)) is None
