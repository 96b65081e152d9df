"""Studies: sweep files with a name, shipped in `efficientllm_data/sweeps/`, and their ids.

A study is a sweep (runs.sweep) that `efficientllm study` queues with repeats; its id, used
as every run's `sweep_id`, selects its runs for `efficientllm report --study ID`.
"""

from __future__ import annotations

import hashlib
import re
import time
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs.sweep import SweepFile, parse_sweep, read_sweep

SHIPPED_PACKAGE = "efficientllm_data"
SHIPPED_DIR = "sweeps"


def _folder() -> Traversable:
    return resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_DIR)


def shipped() -> list[str]:
    """Names of the studies shipped with efficientllm (`paper`, `ci-tiny`, ...)."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_shipped(name: str) -> SweepFile:
    """A shipped study by name, parsed and validated.

    Raises:
        BadInput: No shipped study has that name.
    """
    if name not in shipped():
        raise BadInput(f"unknown study {name!r}; shipped: {', '.join(shipped()) or 'none'} "
                       "(or give a sweep FILE.toml)")
    text = _folder().joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_sweep(text, f"study {name}")


def load(name_or_file: str) -> tuple[str, str, SweepFile]:
    """The study a user named: a shipped one, else a sweep file.

    Returns:
        (its name, its source for the sweep record, the parsed file). A file's name is its
        `[study] name`, else its file name without `.toml`.

    Raises:
        BadInput: Neither a shipped study nor a readable, valid sweep file.
    """
    if name_or_file in shipped():
        sweep = load_shipped(name_or_file)
        return sweep.name or name_or_file, f"study:{name_or_file}", sweep
    path = Path(name_or_file).expanduser()
    if not path.is_file():
        raise BadInput(f"unknown study {name_or_file!r}; shipped: "
                       f"{', '.join(shipped()) or 'none'} (or give a sweep FILE.toml)")
    sweep = read_sweep(path)
    return sweep.name or path.stem, str(path.absolute()), sweep


def study_id(name: str, now_ns: int | None = None) -> str:
    """`study-<name>-<UTC stamp>-<6 hex>`: sortable, and unique across hosts that merge
    their runs into one database."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns / 1e9))
    safe = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")[:40] or "study"
    digest = hashlib.sha1(f"{name}{now_ns}".encode()).hexdigest()[:6]
    return f"study-{safe}-{stamp}-{digest}"
