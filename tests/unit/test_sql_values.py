"""SQL values written one way in the console's grid and `efficientllm sql` (display.sql_cell,
sql_json, commands.common.format_rows), the schema the console shows, and its completion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientllm_tui.commands.common import format_rows
from efficientllm_tui.display import interval_text, sql_cell, sql_json
from efficientllm_tui.store.console import ConsoleQuery, completions, export_query, schema_tables
from efficientllm_tui.store.db import Store

ODD_TYPES = (
    "SELECT INTERVAL 90 MINUTE AS i, INTERVAL '1 year 2 months 3 days 04:05:06.5' AS i2, "
    "INTERVAL '-1 day -2 hours' AS i3, 1.50::DECIMAL(5,2) AS d, "
    "TIMESTAMP '2026-01-02 03:04:05' AS ts, TIMESTAMPTZ '2026-01-02 03:04:05.123' AS tz, "
    "DATE '2026-01-02' AS dt, [1, NULL] AS l, {'a': 1, 'b': 'x'} AS s, true AS b, "
    "NULL AS n, MAP {'k': 1} AS m, '\\x00ab'::BLOB AS bl, 0.125::DOUBLE AS f, "
    "12345678901234567890::HUGEINT AS h, 'nan'::DOUBLE AS nan")
CELLS = ["01:30:00", "1 year 2 months 3 days 04:05:06.5", "-1 day -02:00:00", "1.50",
         "2026-01-02 03:04:05", "2026-01-02 03:04:05.123+00", "2026-01-02", "[1, NULL]",
         "{'a': 1, 'b': x}", "true", "NULL", "{k=1}", "\\x00ab", "0.125",
         "12345678901234567890", "nan"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(tmp_path / "e.duckdb")
    with db.connect():
        pass  # a write open creates the schema
    return db


def test_duckdb_types_read_as_duckdb_spells_them(store: Store) -> None:
    result = store.query(ODD_TYPES)
    (row,) = result.rows
    assert [sql_cell(v) for v in row] == CELLS
    # DuckDB's own casts to text agree, type by type.
    spelled = store.query("SELECT " + ", ".join(f"x.{c}::VARCHAR" for c in result.columns[:13])
                          + f" FROM ({ODD_TYPES}) x").rows[0]
    assert [sql_cell(v) for v in row[:13]] == [s if s is not None else "NULL" for s in spelled]


def test_csv_and_json_keep_types(store: Store) -> None:
    result = store.query(ODD_TYPES)
    csv_text = format_rows(result.columns, result.rows, "csv")
    assert csv_text.splitlines()[1] == (
        '01:30:00,1 year 2 months 3 days 04:05:06.5,-1 day -02:00:00,1.50,2026-01-02 03:04:05,'
        '2026-01-02 03:04:05.123+00,2026-01-02,"[1, NULL]","{\'a\': 1, \'b\': x}",true,,{k=1},'
        '\\x00ab,0.125,12345678901234567890,nan')
    (doc,) = json.loads(format_rows(result.columns, result.rows, "json"))
    assert doc == {"i": "01:30:00", "i2": "1 year 2 months 3 days 04:05:06.5",
                   "i3": "-1 day -02:00:00", "d": 1.5, "ts": "2026-01-02 03:04:05",
                   "tz": "2026-01-02 03:04:05.123+00", "dt": "2026-01-02", "l": [1, None],
                   "s": {"a": 1, "b": "x"}, "b": True, "n": None, "m": {"k": 1},
                   "bl": "\\x00ab", "f": 0.125, "h": 12345678901234567890, "nan": "nan"}


def test_interval_and_float_edges() -> None:
    assert interval_text(0, 0, 0) == "00:00:00"
    assert interval_text(-14, 0, 0) == "-1 year -2 months"
    assert interval_text(1, 1, 1_000) == "1 month 1 day 00:00:00.000001"
    assert sql_cell(1 / 3) == "0.3333" and sql_cell(1 / 3, exact=True) == "0.3333333333333333"
    assert sql_cell(float("-inf")) == "-inf" and sql_json(float("inf")) == "inf"
    assert sql_cell(False) == "false" and sql_cell(12345) == "12345"


def test_schema_lists_tables_views_and_column_types(store: Store) -> None:
    tables = {t.name: t for t in schema_tables(store)}
    assert [t.name for t in tables.values() if t.kind == "view"] == ["leaderboard", "run_metrics"]
    assert {"runs", "samples", "steps", "windows", "events", "metrics"} <= {
        t.name for t in tables.values() if t.kind == "table"}
    runs = dict(tables["runs"].columns)
    assert runs["run_id"] == "VARCHAR" and runs["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert list(dict(tables["metrics"].columns)) == store.query(
        "SELECT * FROM metrics LIMIT 0").columns


def test_completion_of_table_and_column_names(store: Store) -> None:
    tables = schema_tables(store)
    assert completions("select * from run_m", tables) == ("etrics", ["run_metrics"])
    assert completions("SELECT * FROM LEAD", tables) == ("erboard", ["leaderboard"])
    insert, names = completions("select runs.sta", tables)
    assert insert == "" and names == ["started_at", "status"]
    assert completions("select runs.run_", tables)[0] == "id"
    assert completions("select 1 ", tables) == ("", [])
    assert completions("select zzz", tables) == ("", [])


def test_several_statements_each_give_their_rows(store: Store, tmp_path: Path) -> None:
    sql = "SELECT 1 AS a; CREATE TEMP TABLE t AS SELECT 2 AS b; SELECT b FROM t; SELECT 3 AS c"
    results = ConsoleQuery(store, sql).run_all()
    assert [(r.statement, r.statements, r.columns, r.rows) for r in results] == [
        (1, 4, ["a"], [(1,)]), (2, 4, ["Count"], [(1,)]), (3, 4, ["b"], [(2,)]),
        (4, 4, ["c"], [(3,)])]
    assert results[2].sql == "SELECT b FROM t;"
    assert ConsoleQuery(store, sql).run().rows == [(3,)]
    assert export_query(store, sql, tmp_path / "b.csv", statement=3) == 1
    assert (tmp_path / "b.csv").read_text() == '"b"\n2\n'
