"""The catalogs: `efficientllm models` and `efficientllm techniques`, from the runners' typed
catalog (stdlib only: listing them loads no torch)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from efficientllm_tui.commands.common import emit_json, table
from runners import params
from runners.models import catalog
from runners.models.cards import ModelCard


def _status(available: bool) -> str:
    return "available" if available else "not yet implemented"


def _tasks(card: ModelCard) -> list[str]:
    """The inference tasks a model runs (`--set task`): text decode, or a vision-language
    model's vqa and captioning."""
    return list(params.VISION_TASKS) if card.vision is not None else ["decode"]


def cmd_models(args: argparse.Namespace) -> int:
    cards = catalog.models()
    if args.json:
        emit_json([{**asdict(c), "tasks": _tasks(c)} for c in cards])
        return 0
    table(["id", "arch", "weights", "layers", "hidden", "heads/kv", "tasks", "status",
           "description"],
          [[c.id, c.arch, c.weights, c.num_layers, c.hidden_size,
            f"{c.num_heads}/{c.num_kv_heads}", ", ".join(_tasks(c)), _status(c.available),
            c.description]
           for c in cards])
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    techniques = catalog.techniques()
    if args.json:
        emit_json([asdict(t) for t in techniques])
        return 0
    table(["id", "family", "group", "status", "description"],
          [[t.id, t.family, t.group, _status(t.available), t.description] for t in techniques])
    return 0
