"""Shipped assets (eval/training text, model shape cards, the technique catalog, paper ranks).

Installed as the package `efficientllm_data`; stdlib only so every side may read it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


def read_text(name: str) -> str:
    """The text of a shipped asset file."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def load_json(name: str) -> Any:
    """A shipped JSON asset, parsed once."""
    return json.loads(read_text(name))


def catalog() -> dict[str, Any]:
    """The model and technique catalog (`catalog.json`)."""
    return load_json("catalog.json")


def find_technique(technique_id: str) -> dict[str, Any] | None:
    """The catalog entry of a technique id, or None."""
    return next((t for t in catalog()["techniques"] if t["id"] == technique_id), None)


def find_model(model_id: str) -> dict[str, Any] | None:
    """The catalog card of a model id, or None."""
    return next((m for m in catalog()["models"] if m["id"] == model_id), None)
