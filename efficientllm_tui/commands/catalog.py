"""The catalogs: `efficientllm models` and `efficientllm techniques`."""

from __future__ import annotations

import argparse
from typing import Any

import efficientllm_data

from efficientllm_tui.commands.common import (
    emit_json,
    table,
)


def _catalog_rows(kind: str) -> list[dict[str, Any]]:
    return list(efficientllm_data.catalog()[kind])


def cmd_models(args: argparse.Namespace) -> int:
    rows = _catalog_rows("models")
    if args.json:
        emit_json(rows)
        return 0
    table(["id", "arch", "weights", "layers", "hidden", "heads/kv", "status", "description"],
           [[m["id"], m["arch"], m["weights"], m["num_layers"], m["hidden_size"],
             f"{m['num_heads']}/{m['num_kv_heads']}",
             "available" if m.get("available") else "not yet implemented", m["description"]]
            for m in rows])
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    rows = _catalog_rows("techniques")
    if args.json:
        emit_json(rows)
        return 0
    table(["id", "family", "group", "status", "description"],
           [[t["id"], t["family"], t["group"],
             "available" if t.get("available") else "not yet implemented", t["description"]]
            for t in rows])
    return 0
