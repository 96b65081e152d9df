"""The EfficientLLM paper's published ranks (data/efficientllm_ranks.json), matched to ours.

The paper ranks methods within a group; for quantization and fine-tuning its groups are
model-size ranges, for pretraining the same groups as ours. A technique id maps to the
paper's method name; a run's model picks the size range it falls in (or the nearest one,
said so on screen).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import efficientllm_data

from efficientllm_tui.matrix import estimate_params
from profiling import metric_catalog

METHOD_NAMES: dict[str, str] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "int4": "int4",
    "lora": "LoRA",
    "lora-plus": "LoRA-Plus",
    "rslora": "RSLoRA",
    "dora": "DoRA",
    "pissa": "PiSSA",
    "freeze": "Freeze",
    "full": "Full*",
    "mqa": "MQA",
    "gqa": "GQA",
    "mla": "MLA",
    "nsa": "NSA",
    "rope": "RoPE",
    "absolute": "Absolute",
    "learned": "Learnable Absolute",
    "relative": "Relate",
    "mamba": "Mamba",
    "pythia": "Pythia",
    "rwkv": "RWKV",
    "transformer": "Transformer",
}
"""Our technique id -> the paper's method name."""

PAPER_FAMILY = {
    "inference": "quantization",
    "finetuning": "finetuning",
    "pretraining": "pretraining",
}




@dataclass(frozen=True)
class PaperRank:
    """The paper's rank of a method for one metric, and which paper group it comes from."""

    rank: int
    group: str
    method: str
    nearest: bool
    """True when the run's model size lies outside the paper group's size range."""


@cache
def _rows() -> tuple[dict[str, Any], ...]:
    return tuple(efficientllm_data.load_json("efficientllm_ranks.json")["rows"])


def _size_range(group: str) -> tuple[float, float] | None:
    """`7B-8B` -> (7e9, 8e9); None for a group that is not a size range."""
    m = re.fullmatch(r"([\d.]+)B-([\d.]+)B", group)
    return (float(m.group(1)) * 1e9, float(m.group(2)) * 1e9) if m else None


def _pick_group(groups: list[str], params: int | None) -> tuple[str, bool]:
    """The size group containing `params`, else the nearest on a log scale."""
    ranges = {g: r for g in groups if (r := _size_range(g)) is not None}
    if not ranges:
        return groups[0], False
    if params is None:
        return min(ranges, key=lambda g: ranges[g][0]), True
    for g, (lo, hi) in ranges.items():
        if lo * 0.9 <= params <= hi * 1.1:  # model names round their size
            return g, False

    def distance(g: str) -> float:
        lo, hi = ranges[g]
        return min(abs(math.log(params / lo)), abs(math.log(params / hi)))

    return min(ranges, key=distance), True


def paper_rank(
    family: str, group: str | None, technique: str, model: str | None, metric: str
) -> PaperRank | None:
    """The paper's rank for this run's technique and metric, or None where it has none."""
    method = METHOD_NAMES.get(technique)
    known = metric_catalog.info(metric)
    column = known.paper if known is not None else None
    paper_family = PAPER_FAMILY.get(family)
    if method is None or column is None or paper_family is None:
        return None
    rows = [r for r in _rows() if r["family"] == paper_family and r["method"] == method]
    if paper_family == "pretraining":
        rows = [r for r in rows if r["group"] == group]
        nearest = False
    else:
        groups = list(dict.fromkeys(r["group"] for r in rows))
        if not groups:
            return None
        card = efficientllm_data.find_model(model or "") or {}
        chosen, nearest = _pick_group(groups, estimate_params(card) if card else None)
        rows = [r for r in rows if r["group"] == chosen]
    if not rows or column not in rows[0]["ranks"]:
        return None
    row = rows[0]
    return PaperRank(int(row["ranks"][column]), row["group"], method, nearest)
