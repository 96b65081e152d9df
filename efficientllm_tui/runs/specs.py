"""Specs from user input: a technique and a model resolved against the runners' typed
catalog, every `--set` parameter and the dataset's head checked (runners.preflight), all
before a run dir exists, so bad input leaves nothing behind. Stdlib only: no torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from runners import errors as runner_errors
from runners import preflight
from runners.models import catalog
from runners.models.cards import ModelCard, Technique
from runners.protocol import (
    BUILTIN_DATASETS,
    FAMILIES,
    ProtocolError,
    RunSpec,
    new_run_id,
)


def resolve_technique(technique: str, family: str | None) -> Technique:
    """The catalog entry of a technique id (ids are unique across families), checked against
    `family` when given."""
    if family is not None and family not in FAMILIES:
        raise BadInput(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    try:
        return catalog.technique(technique, family)
    except runner_errors.BadInput as e:
        raise BadInput(str(e)) from None


def resolve_model(model: str) -> ModelCard:
    """The card of a catalog model id, a local weights dir or an org/name entry of the
    offline Hugging Face cache (read from its config.json, no torch)."""
    try:
        return catalog.model_card(model)
    except runner_errors.BadInput as e:
        raise BadInput(str(e)) from None


def build_spec(*, model: str, technique: str, family: str | None = None, device: str = "auto",
               params: dict[str, Any] | None = None, run_id: str | None = None,
               **fields: Any) -> RunSpec:
    """A validated RunSpec from user input; every problem is a BadInput with one line.

    Checks what the runner would refuse, before any runner starts: the `--set` parameters
    against the runners' schema, the pair against the model card and the head of the
    dataset (runners.preflight), so bad input leaves no run dir and no stored run.
    """
    family = resolve_technique(technique, family).family
    if (fields.get("world_size") or 1) > 1 and family == "inference":
        raise BadInput("inference runs on one device; --world-size/--gpus is for "
                       "pretraining and finetuning")
    card = resolve_model(model)
    if fields.get("dataset") and fields["dataset"] not in BUILTIN_DATASETS:
        path = Path(str(fields["dataset"])).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise BadInput(f"dataset {str(fields['dataset'])!r} is not a readable file")
        fields["dataset"] = str(path.resolve())
    now = time.time_ns()
    try:
        spec = RunSpec(run_id=run_id or new_run_id(model, technique, now), family=family,
                       technique=technique, model=model, device=device,
                       params=dict(params or {}), created_ns=now,
                       **{k: v for k, v in fields.items() if v is not None})
        preflight.validate_spec(spec, card)
    except (ProtocolError, runner_errors.BadInput) as e:
        raise BadInput(str(e)) from None
    return spec


def world(device: str, world_size: int | None, gpus: int | None) -> tuple[str, int | None]:
    """`--device`, `--world-size` and `--gpus` as the spec's (device, world_size).

    A GPU list (`cuda:0,cuda:1`) is its first device and its length; `--gpus N` is
    `--world-size N` on a GPU (refused with `--device cpu`: CPU processes are
    `--world-size N`). None keeps the spec's default (one process).
    """
    from runners.distributed import MAX_WORLD_SIZE, parse_device_list

    try:
        device, listed = parse_device_list(device)
    except runner_errors.BadInput as e:
        raise BadInput(str(e)) from None
    if gpus is not None:
        if device == "cpu":
            raise BadInput("--gpus counts GPUs; for several CPU processes use --device cpu "
                           "--world-size N")
        if world_size is not None and world_size != gpus:
            raise BadInput(f"--gpus {gpus} and --world-size {world_size} disagree; give one")
        world_size = gpus
    if listed > 1:
        if world_size is not None and world_size != listed:
            raise BadInput(f"--device lists {listed} GPUs but --world-size/--gpus is "
                           f"{world_size}; give one")
        world_size = listed
    if world_size is not None and not 1 <= world_size <= MAX_WORLD_SIZE:
        raise BadInput(f"--world-size/--gpus must be 1 to {MAX_WORLD_SIZE}, got {world_size}")
    return device, world_size


def technique_available(technique: str) -> bool:
    try:
        return catalog.technique(technique).available
    except runner_errors.BadInput:
        return False
