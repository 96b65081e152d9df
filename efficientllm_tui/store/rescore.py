"""Storing a later re-score (`efficientllm eval`) onto a stored run, as SQL on a connection
the store opens and passes in (no `duckdb` import here; efficientllm_tui.store.db owns it).

What changes: the re-score's metrics replace those of the same name (a NULL never replaces
a stored value), its windows (named
`eval <id>: <window>`) and one `eval` event are added, and its info is merged into the
run's. Keyed by the eval's id, so storing the same eval twice leaves one copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from efficientllm_tui.errors import BadInput


def merged_info(old: Mapping[str, Any], patch: Mapping[str, Any], eval_id: str
                ) -> dict[str, Any]:
    """`old` info with `patch` merged in: a dict value into the dict there, `evals`
    appended to the list there (an earlier copy of the same eval replaced)."""
    merged = dict(old)
    for key, value in patch.items():
        if key == "evals":
            kept = [e for e in old.get("evals", []) if e.get("eval_id") != eval_id]
            merged[key] = [*kept, *value]
        elif isinstance(value, dict) and isinstance(old.get(key), dict):
            merged[key] = {**old[key], **value}
        else:
            merged[key] = value
    return merged


def attach(con: Any, run_id: str, metrics: Sequence[Mapping[str, Any]],
           windows: Sequence[Mapping[str, Any]], event: Mapping[str, Any],
           info: Mapping[str, Any]) -> None:
    """Write the re-score into the open transaction `con`.

    Raises:
        BadInput: No run `run_id` is stored.
    """
    eval_id = str(event["payload"]["eval_id"])
    found = con.execute("SELECT info FROM runs WHERE run_id = ?", [run_id]).fetchall()
    if not found:
        raise BadInput(f"no run {run_id!r} is stored to attach scores to")
    old = json.loads(found[0][0]) if found[0][0] else {}
    con.execute("UPDATE runs SET info = ?::JSON WHERE run_id = ?",
                [json.dumps(merged_info(old, info, eval_id), sort_keys=True, default=str),
                 run_id])
    # A value the re-score could not produce (lm-eval missing, a dataset gone) never
    # replaces one stored before: only what was scored, or what had no value anyway.
    kept = {name for (name,) in con.execute(
        "SELECT name FROM metrics WHERE run_id = ? AND value IS NOT NULL", [run_id]).fetchall()}
    rows = [(run_id, str(m["name"]), m.get("value"), m.get("unit"), m.get("source"),
             m.get("note")) for m in metrics
            if m.get("value") is not None or str(m["name"]) not in kept]
    for name in {r[1] for r in rows}:
        con.execute("DELETE FROM metrics WHERE run_id = ? AND name = ?", [run_id, name])
    if rows:
        con.executemany("INSERT INTO metrics (run_id, name, value, unit, source, note) "
                        "VALUES (?, ?, ?, ?, ?, ?)", rows)
    prefix = f"eval {eval_id}: "
    con.execute("DELETE FROM windows WHERE run_id = ? AND starts_with(name, ?)",
                [run_id, prefix])
    for w in windows:
        con.execute("INSERT INTO windows (run_id, name, device, t0_ns, t1_ns, energy_j, "
                    "energy_source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [run_id, prefix + str(w.get("name")), w.get("device"), w.get("t0_ns"),
                     w.get("t1_ns"), w.get("energy_j"), w.get("energy_source")])
    con.execute("DELETE FROM events WHERE run_id = ? AND kind = 'eval' AND "
                "json_extract_string(payload, '$.eval_id') = ?", [run_id, eval_id])
    con.execute("INSERT INTO events (run_id, seq, t_ns, kind, payload) SELECT ?, "
                "coalesce(max(seq), -1) + 1, ?, 'eval', ?::JSON FROM events "
                "WHERE run_id = ?", [run_id, event.get("t_ns"),
                                     json.dumps(event["payload"], default=str), run_id])
