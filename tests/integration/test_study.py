"""`efficientllm study` and `efficientllm import` through the real CLI: the shipped ci-tiny
study end to end on the CPU (queued, stopped in part, resumed, every run stored with the
study id), repeats by seed, and bad input refused whole with one line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from efficientllm_tui.runs.specs import technique_available
from efficientllm_tui.store.db import Store
from tests.integration.conftest import Cli
from tests.unit.store_rows import make_bundle

CI_TINY = Path(__file__).resolve().parents[2] / "data" / "sweeps" / "ci-tiny.toml"


def _sql(cli: Cli, query: str) -> list[dict]:
    return cli.json("sql", query, "--format", "json")  # type: ignore[return-value]


@pytest.mark.slow
def test_ci_tiny_study_queued_stopped_resumed_and_stored(cli: Cli) -> None:
    techniques = [t for m in tomllib.loads(CI_TINY.read_text())["matrix"]
                  for t in m["techniques"]]
    missing = [t for t in techniques if not technique_available(t)]
    if missing:
        pytest.skip(f"ci-tiny names technique(s) not in this catalog yet: {missing}")
    queued = cli.json("study", "ci-tiny", "--json")
    assert isinstance(queued, dict) and queued["name"] == "ci-tiny"
    study_id = queued["study_id"]
    assert study_id.startswith("study-ci-tiny-") and len(queued["run_ids"]) == len(techniques)
    # the last three never start: stopped while they wait
    stopped = queued["run_ids"][-3:]
    out = cli("stop", *stopped, "--json")
    assert out.returncode == 0, out.stderr
    assert [r["result"] for r in json.loads(out.stdout)] == ["removed from the queue"] * 3
    resumed = cli("study", "--resume", study_id[:20], "--follow", "--json", timeout=420)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["study_id"] == study_id
    assert [r["status"] for r in doc["runs"]] == ["ok"] * len(techniques), doc["runs"]
    assert [r["technique"] for r in doc["runs"]] == techniques
    new_ids = {r["run_id"] for r in doc["runs"]} - set(queued["run_ids"])
    assert len(new_ids) == 3 and not new_ids & set(stopped)
    rows = _sql(cli, "SELECT run_id, technique, status, seed, sweep_id, device FROM runs")
    assert {r["sweep_id"] for r in rows} == {study_id}
    assert sorted(r["technique"] for r in rows if r["status"] == "ok") == sorted(techniques)
    assert {r["run_id"] for r in rows if r["status"] == "cancelled"} == set(stopped)
    assert {(r["seed"], r["device"]) for r in rows} == {(0, "cpu")}
    groups = _sql(cli, "SELECT DISTINCT group_name FROM runs ORDER BY 1")
    assert [g["group_name"] for g in groups] == [
        "attention", "attention_free", "bit_width", "moe", "peft", "positional_encoding"]

    # ... and the report over it: every ok run in a table, its numbers the stored ones
    out_dir = cli.home / "report"
    out = cli("report", "--study", study_id, "-o", str(out_dir), "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["report"]
    assert report["study"] == study_id and report["run_count"] == len(techniques)
    assert {(s["family"], s["group"]) for s in report["sections"]} >= {
        ("pretraining", "attention"), ("finetuning", "peft"), ("inference", "bit_width")}
    stored = {(m["run_id"], m["name"]): m["value"] for m in _sql(
        cli, "SELECT run_id, name, value FROM metrics WHERE value IS NOT NULL")}
    checked = 0
    for section in report["sections"]:
        for workload in section["workloads"]:
            for row in workload["rows"]:
                (run_id,) = row["run_ids"]  # one repeat each: the median is the stored value
                # tiny has random weights: marked as such, but for pretraining (from scratch)
                assert ("R" in row["marks"]) == (section["family"] != "pretraining")
                for name, stat in row["stats"].items():
                    if stat["median"] is not None:
                        assert stat["median"] == pytest.approx(stored[(run_id, name)])
                        assert stat["n"] == 1
                        checked += 1
    assert checked >= 3 * len(techniques)
    assert (out_dir / "index.html").is_file() and (out_dir / "report.md").is_file()
    assert study_id in (out_dir / "report.md").read_text()


@pytest.mark.slow
def test_repeats_run_each_pair_with_the_next_seeds(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text('[study]\nname = "mini"\n[defaults]\ndevice = "cpu"\nsteps = 1\n'
                    'warmup = 0\nseed = 5\n[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n'
                    'set = { eval_tokens = 0 }\n')
    doc = cli.json("study", str(path), "--repeats", "3", "--follow", "--json", timeout=240)
    assert isinstance(doc, dict) and doc["study_id"].startswith("study-mini-")
    assert [r["status"] for r in doc["runs"]] == ["ok"] * 3
    rows = _sql(cli, "SELECT seed, sweep_id, technique, model, steps FROM runs ORDER BY seed")
    assert rows == [{"seed": s, "sweep_id": doc["study_id"], "technique": "fp32",
                     "model": "tiny", "steps": 1} for s in (5, 6, 7)]


def _refused(cli: Cli, *args: str) -> str:
    out = cli(*args)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    return out.stderr.strip()


def test_bad_studies_are_refused_and_nothing_is_queued(cli: Cli, tmp_path: Path) -> None:
    assert _refused(cli, "study", "nope") == (
        "efficientllm: error: unknown study 'nope'; shipped: ci-tiny, cpu, paper (or give a sweep "
        "FILE.toml)")
    assert _refused(cli, "study", "ci-tiny", "--repeats", "0") == (
        "efficientllm: error: --repeats must be an integer from 1 to 100, got 0")
    empty = tmp_path / "empty.toml"
    empty.write_text('[study]\nname = "empty"\n')
    assert _refused(cli, "study", str(empty)) == (
        f"efficientllm: error: {empty}: no runs; add a [[matrix]] or [[run]] table")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[matrix]]\nmodels = ["tiny"]\ntechniques = ["fp32", "int3"]\n')
    assert _refused(cli, "study", str(bad)).startswith(
        f"efficientllm: error: {bad} [[matrix]] #1: unknown technique 'int3'")
    typed = tmp_path / "typed.toml"
    typed.write_text('[study]\nrepeats = "3"\n[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n')
    assert _refused(cli, "study", str(typed)) == (
        f"efficientllm: error: {typed} [study]: repeats must be a int, got '3'")
    assert _refused(cli, "study") == (
        "efficientllm: error: give a study NAME or FILE.toml (`efficientllm study --list` shows "
        "the shipped ones), or --resume STUDY_ID")
    assert _refused(cli, "study", "--resume", "study-none") == (
        f"efficientllm: error: no sweep 'study-none' in {cli.home / 'sweeps'}")
    assert not (cli.home / "runs").exists() or not any((cli.home / "runs").iterdir())
    assert not (cli.home / "sweeps").exists()
    listed = cli.json("study", "--list", "--json")
    assert isinstance(listed, list) and [s["name"] for s in listed] == ["ci-tiny", "cpu", "paper"]


def test_import_from_an_export_skips_then_replaces(cli: Cli, tmp_path: Path) -> None:
    src = Store(tmp_path / "src.duckdb", lock_timeout_s=5)
    for i, run_id in enumerate(("r1", "r2")):
        src.ingest(make_bundle(run_id, metrics={"amu": 0.5 + i}))
    files = []
    for table in ("runs", "metrics", "steps"):
        files.append(str(tmp_path / f"{table}.parquet"))
        out = cli("export", "--table", table, "--format", "parquet", "-o", files[-1],
                  "--db", str(src.path))
        assert out.returncode == 0, out.stderr
    db = str(tmp_path / "merged.duckdb")
    doc = cli.json("import", *files, "--db", db, "--json")
    assert isinstance(doc, dict)
    assert (doc["imported"], doc["skipped"], doc["replaced"]) == (["r1", "r2"], [], [])
    assert doc["rows"] == {"runs": 2, "samples": 0, "steps": 6, "windows": 0, "events": 0,
                           "metrics": 2}
    out = cli("import", *files, "--db", db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"imported 0 run(s), replaced 0, skipped 2 already stored (--replace replaces them) "
        f"into {db}", "  skipped r1: already stored", "  skipped r2: already stored"]
    doc = cli.json("import", str(src.path), "--db", db, "--replace", "--json")
    assert isinstance(doc, dict) and doc["replaced"] == ["r1", "r2"]
    assert doc["rows"]["samples"] == 10  # the database carries every table
    rows = cli.json("sql", "SELECT run_id, amu FROM run_metrics ORDER BY run_id", "--format",
                    "json", "--db", db)
    assert rows == [{"run_id": "r1", "amu": 0.5}, {"run_id": "r2", "amu": 1.5}]


def test_import_of_a_newer_database_is_refused(cli: Cli, tmp_path: Path) -> None:
    import duckdb

    from efficientllm_tui.store.schema import SCHEMA_VERSION

    src = Store(tmp_path / "new.duckdb", lock_timeout_s=5)
    src.ingest(make_bundle("r1"))
    con = duckdb.connect(str(src.path))
    con.execute("UPDATE schema_meta SET value = ? WHERE key = 'schema_version'",
                [str(SCHEMA_VERSION + 1)])
    con.close()
    db = tmp_path / "merged.duckdb"
    Store(db).ingest(make_bundle("mine"))
    assert _refused(cli, "import", str(src.path), "--db", str(db)) == (
        f"efficientllm: error: {src.path} has schema version {SCHEMA_VERSION + 1}, newer than "
        f"this efficientllm understands ({SCHEMA_VERSION}); upgrade efficientllm to import "
        "it; nothing was imported")
    assert Store(db).run_ids() == {"mine"}


def test_a_study_goes_on_on_another_machine_after_import(cli: Cli, tmp_path: Path) -> None:
    """Part one on one machine; its database imported on another, which queues only what
    the study id has not stored (here: a third repeat), under the same id."""
    from tests.integration.conftest import Cli as CliType
    from tests.integration.conftest import stop_dispatcher

    path = tmp_path / "mini.toml"
    path.write_text('[study]\nname = "mini"\n[defaults]\ndevice = "cpu"\nsteps = 1\n'
                    'warmup = 0\nseed = 5\n[[matrix]]\nmodels = ["tiny"]\n'
                    'techniques = ["fp32", "bf16"]\nset = { eval_tokens = 0 }\n')
    first = cli.json("study", str(path), "--repeats", "2", "--follow", "--json", timeout=240)
    assert isinstance(first, dict)
    study_id = first["study_id"]
    assert [r["status"] for r in first["runs"]] == ["ok"] * 4

    home = tmp_path / "other"
    other = CliType(home, {**cli.env, "EFFICIENTLLM_HOME": str(home)})
    try:
        assert other("import", str(cli.home / "efficientllm.duckdb")).returncode == 0
        out = other("study", str(path), "--resume", study_id, "--repeats", "3")
        assert out.returncode == 0, out.stderr
        assert f"study mini ({study_id}): 4 of 6 run(s) stored, 2 queued now" in out.stderr
        # then followed as any study of this home: the imported runs count as stored
        doc = other.json("study", "--resume", study_id, "--follow", "--json", timeout=240)
        assert isinstance(doc, dict)
        assert doc["study_id"] == study_id and [r["status"] for r in doc["runs"]] == ["ok"] * 6
        assert {r["run_id"] for r in doc["runs"]} >= {r["run_id"] for r in first["runs"]}
        rows = _sql(other, "SELECT technique, seed FROM runs WHERE sweep_id = "
                           f"'{study_id}' AND status = 'ok' ORDER BY technique, seed")
        assert [(r["technique"], r["seed"]) for r in rows] == [
            ("bf16", 5), ("bf16", 6), ("bf16", 7), ("fp32", 5), ("fp32", 6), ("fp32", 7)]
        again = other("study", str(path), "--resume", study_id, "--repeats", "3")
        assert again.returncode == 0
        assert "6 of 6 run(s) stored, 0 queued now" in again.stderr
        assert _refused(other, "study", str(path), "--resume", "study-none") == (
            f"efficientllm: error: no study 'study-none' in {home / 'efficientllm.duckdb'} "
            "or this home: import the database its parts were stored in first "
            "(efficientllm import FILE)")
    finally:
        other("daemon", "stop", timeout=30)
        stop_dispatcher(home)
