"""Run launching: validate a spec, lay out its run dir, start the runner detached, follow it.

Why detached: runs must outlive their launcher. A runner starts in its own session with
stdin from /dev/null and stdout/stderr to files in its run dir, so closing the terminal or
losing SSH (SIGHUP to the TUI) never reaches it, and no test or CI waits on its pipes. The
launcher only tails `events.jsonl`; the runner takes its own per-device lock.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import efficientllm_data

from efficientllm_tui.errors import BadInput
from runners import errors as runner_errors
from runners import preflight
from runners.protocol import (
    FAMILIES,
    ProtocolError,
    RunSpec,
    new_run_id,
)

TERMINAL_KINDS = ("result", "error")


def resolve_technique(technique: str, family: str | None) -> tuple[str, dict[str, Any]]:
    """The family of a technique id (ids are unique across families), checked against `family`."""
    entry = efficientllm_data.find_technique(technique)
    if entry is None:
        ids = sorted(t["id"] for t in efficientllm_data.catalog()["techniques"]
                     if family is None or t["family"] == family)
        raise BadInput(f"unknown technique {technique!r}; known: {', '.join(ids)}")
    if family is not None and family not in FAMILIES:
        raise BadInput(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if family is not None and entry["family"] != family:
        raise BadInput(f"technique {technique!r} belongs to family {entry['family']!r}, "
                       f"not {family!r}")
    return entry["family"], entry


def resolve_model(model: str) -> dict[str, Any] | None:
    """The catalog card of a model id; None for an existing local weights dir."""
    card = efficientllm_data.find_model(model)
    if card is not None:
        return card
    if os.path.isdir(os.path.expanduser(model)):
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return None  # an offline Hugging Face cache id (org/name): the runner resolves it
    ids = sorted(m["id"] for m in efficientllm_data.catalog()["models"])
    raise BadInput(f"unknown model {model!r}; known: {', '.join(ids)} (or a local weights dir, "
                   "or an org/name entry of the offline Hugging Face cache)")


def build_spec(*, model: str, technique: str, family: str | None = None, device: str = "auto",
               params: dict[str, Any] | None = None, run_id: str | None = None,
               **fields: Any) -> RunSpec:
    """A validated RunSpec from user input; every problem is a BadInput with one line.

    Checks what the runner would refuse, before any runner starts: the `--set` parameters
    against the runners' schema, the pair against the model card and the head of the
    dataset (runners.preflight), so bad input leaves no run dir and no stored run.
    """
    family, _ = resolve_technique(technique, family)
    card = resolve_model(model)
    if fields.get("dataset"):
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


def technique_available(technique: str) -> bool:
    entry = efficientllm_data.find_technique(technique)
    return bool(entry and entry.get("available"))
