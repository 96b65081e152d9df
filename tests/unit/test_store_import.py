"""`Store.import_files`: runs merged from `efficientllm export` files (parquet, json, csv) and
from other efficientllm databases, in one transaction, never silently."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from efficientllm_tui.errors import BadInput
from efficientllm_tui.store.db import Store
from efficientllm_tui.store.schema import SCHEMA_VERSION
from tests.unit.store_rows import TABLES, count_rows, make_bundle, store, version_1_file

__all__ = ["store"]  # the fixture


def _source(tmp_path: Path, *ids: str, **run: object) -> Store:
    src = Store(tmp_path / "src" / "src.duckdb", lock_timeout_s=5)
    for i, run_id in enumerate(ids):
        src.ingest(make_bundle(run_id, metrics={"amu": 0.25 + i, "it": 42.0},
                               sweep_id="study-x", **run))
    return src


def _export(src: Store, out: Path, fmt: str, tables: tuple[str, ...] = TABLES) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        path = out / f"{table}.{fmt}"
        src.export(path, fmt, table=table)
        paths.append(path)
    return paths


def _dump(store: Store) -> dict[str, list[dict]]:
    """Every table's rows, JSON columns parsed (their text spacing is not data)."""
    out = {}
    with store.connect(read_only=True) as con:
        for table in TABLES:
            cur = con.execute(f"SELECT * FROM {table} ORDER BY ALL")
            names = [d[0] for d in cur.description]
            rows = []
            for row in cur.fetchall():
                doc = dict(zip(names, row, strict=True))
                for k in ("params", "info", "payload", "extra"):
                    if isinstance(doc.get(k), str):
                        doc[k] = json.loads(doc[k])
                rows.append(doc)
            out[table] = rows
    return out


@pytest.mark.parametrize("fmt", ["parquet", "json", "csv"])
def test_an_export_round_trips_every_table(store: Store, tmp_path: Path, fmt: str) -> None:
    src = _source(tmp_path, "a", "b")
    report = store.import_files(_export(src, tmp_path / "out", fmt))
    assert (report.imported, report.replaced, report.skipped) == (("a", "b"), (), ())
    expected = count_rows(src)
    assert report.rows == expected == count_rows(store)
    assert expected == {"runs": 2, "samples": 10, "steps": 6, "windows": 2, "events": 6,
                        "metrics": 4}
    assert _dump(store) == _dump(src)
    assert report.files[0] == f"{tmp_path / 'out' / ('runs.' + fmt)}: runs, 2 rows"


def test_stored_runs_are_skipped_unless_replace(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("a", metrics={"amu": 0.9}, model="mine"))
    src = _source(tmp_path, "a", "b")
    files = _export(src, tmp_path / "out", "parquet")
    report = store.import_files(files)
    assert (report.imported, report.replaced, report.skipped) == (("b",), (), ("a",))
    got = store.get_run("a")
    assert got is not None and got["model"] == "mine" and got["metrics"]["amu"][0] == 0.9
    assert report.rows["runs"] == 1 and report.rows["metrics"] == 2
    report = store.import_files(files, replace=True)
    assert (report.imported, report.replaced, report.skipped) == ((), ("a", "b"), ())
    got = store.get_run("a")
    assert got is not None and got["model"] == "tiny" and got["metrics"]["amu"][0] == 0.25
    assert count_rows(store) == count_rows(src)


def test_replace_keeps_the_tables_an_import_does_not_carry(store: Store, tmp_path: Path
                                                           ) -> None:
    store.ingest(make_bundle("a", metrics={"amu": 0.9}, model="mine"))
    src = _source(tmp_path, "a")
    report = store.import_files(_export(src, tmp_path / "out", "csv", ("runs", "metrics")),
                                replace=True)
    assert report.replaced == ("a",)
    rows = count_rows(store)
    assert (rows["runs"], rows["metrics"], rows["samples"], rows["steps"]) == (1, 2, 5, 3)
    got = store.get_run("a")
    assert got is not None and got["model"] == "tiny" and got["metrics"]["amu"][0] == 0.25


def test_a_database_file_merges_and_is_only_read(store: Store, tmp_path: Path) -> None:
    src = _source(tmp_path, "a", "b")
    before = src.path.read_bytes()
    report = store.import_files([src.path])
    assert report.imported == ("a", "b") and count_rows(store) == count_rows(src)
    assert report.files == (f"{src.path}: database, rows: runs 2, samples 10, steps 6, "
                            "windows 2, events 6, metrics 4",)
    assert src.path.read_bytes() == before
    assert _dump(store) == _dump(src)


def test_an_older_database_is_migrated_on_a_copy(store: Store, tmp_path: Path) -> None:
    old = version_1_file(tmp_path / "old.duckdb", metrics=True)
    before = old.read_bytes()
    report = store.import_files([old])
    assert report.imported == ("old",)
    got = store.get_run("old")
    assert got is not None and got["metrics"]["al_s"][0] == 0.5 and got["sweep_id"] is None
    assert old.read_bytes() == before  # still schema 1: the migration ran on a copy
    con = duckdb.connect(str(old), read_only=True)
    assert con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'"
                       ).fetchall() == [("1",)]
    con.close()


def _bad(store: Store, files: list[Path], message: str) -> None:
    before = _dump(store)
    with pytest.raises(BadInput) as e:
        store.import_files(files)
    assert str(e.value).startswith(message), str(e.value)
    assert _dump(store) == before  # nothing written, nothing lost


def test_a_newer_or_foreign_database_is_refused(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("mine"))
    src = _source(tmp_path, "a")
    con = duckdb.connect(str(src.path))
    con.execute("UPDATE schema_meta SET value = ? WHERE key = 'schema_version'",
                [str(SCHEMA_VERSION + 1)])
    con.close()
    _bad(store, [src.path], f"{src.path} has schema version {SCHEMA_VERSION + 1}, newer than "
         f"this efficientllm understands ({SCHEMA_VERSION}); upgrade efficientllm")
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    _bad(store, [other], f"{other} is a DuckDB database but not efficientllm's")
    _bad(store, [store.path], f"{store.path} is the database being imported into")


def test_files_that_are_not_exports_are_refused(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("mine"))
    src = _source(tmp_path, "a", "b")
    view = tmp_path / "rm.parquet"
    src.export(view, "parquet", table="run_metrics")
    _bad(store, [view], f"{view} is an export of a view (run_metrics or leaderboard")
    runs = _export(src, tmp_path / "out", "json", ("runs",))[0]
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps([{**r, "colour": "red"} for r in json.loads(runs.read_text())]))
    _bad(store, [newer], f"{newer} holds runs with column(s) colour that this efficientllm "
         "does not know")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _bad(store, [text], f"{text} is not an efficientllm export")
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    _bad(store, [csv], f"{csv} is not an efficientllm export: its columns (a, b)")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**r, "batch_size": "many"} for r in json.loads(
        runs.read_text())]))
    _bad(store, [bad], f"{bad} cannot be imported: Conversion Error")
    _bad(store, [tmp_path / "missing.parquet"], f"cannot read {tmp_path / 'missing.parquet'}")


def test_ambiguous_imports_are_refused_whole(store: Store, tmp_path: Path) -> None:
    store.ingest(make_bundle("mine"))
    src = _source(tmp_path, "a", "b")
    parquet = _export(src, tmp_path / "p", "parquet")
    csv = _export(src, tmp_path / "c", "csv", ("runs",))[0]
    _bad(store, [*parquet, csv], f"run a is in {csv} and {parquet[0]}; import one copy")
    metrics = parquet[TABLES.index("metrics")]
    _bad(store, [metrics], f"{metrics} holds metrics rows of 2 run(s) that no runs file of "
         "this import holds (e.g. a)")
    assert store.run_ids() == {"mine"}
