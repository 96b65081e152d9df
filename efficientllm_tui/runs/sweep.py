"""Sweep files: a TOML matrix of model x technique pairs expanded into validated RunSpecs.

```toml
[study]                    # optional: what `efficientllm study` shows and repeats
name = "ci-tiny"
description = "every group on the tiny model"
repeats = 2                # each pair this many times, seeds seed, seed+1, ...

[defaults]                 # any `run` option, applied to every pair
device = "cpu"
steps = 8
set = { engine = "eager" }

[[matrix]]                 # every model x every technique (x every batch size, if given)
models = ["tiny"]
techniques = ["fp32", "bf16", "fp16"]
batch_sizes = [1, 4]

[[run]]                    # single pairs, with their own options
model = "tiny"
technique = "fp32"
new_tokens = 64
```

A table's `set` replaces that of `[defaults]` (it is not merged), as in every earlier
sweep file. Runs that differ only by their seed are repeats of one pair.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import specs
from runners.protocol import ProtocolError, RunSpec

_OPTIONS = {"device", "steps", "warmup", "batch_size", "seq_len", "new_tokens", "seed",
            "dataset", "set", "family"}
_STUDY_KEYS = {"name": str, "description": str, "repeats": int}
MAX_REPEATS = 100
"""More repeats than this is a typo, not a study."""


@dataclass(frozen=True, slots=True)
class SweepFile:
    """A parsed, validated sweep file: one spec per pair, before repeats."""

    pairs: tuple[RunSpec, ...]
    """Each pair once, with the seed its table gives (0 when none)."""
    name: str | None
    """`[study] name`; None for a plain sweep file."""
    description: str | None
    """`[study] description`; None when not given."""
    repeats: int
    """`[study] repeats`: how often each pair runs (1 when not given)."""


def _options(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise BadInput(f"{where}: must be a table of key = value")
    unknown = sorted(set(table) - _OPTIONS - {"model", "technique", "models", "techniques",
                                               "batch_sizes"})
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(sorted(_OPTIONS))}")
    opts = {k: v for k, v in table.items() if k in _OPTIONS}
    if "set" in opts and not isinstance(opts["set"], dict):
        raise BadInput(f"{where}: `set` must be a table of key = value")
    return opts


def _spec(model: Any, technique: Any, opts: dict[str, Any], where: str) -> RunSpec:
    if not isinstance(model, str) or not isinstance(technique, str):
        raise BadInput(f"{where}: model and technique must be strings")
    fields = dict(opts)
    params = dict(fields.pop("set", {}) or {})
    family = fields.pop("family", None)
    if family is not None and not isinstance(family, str):
        raise BadInput(f"{where}: family must be a string, got {family!r}")
    try:
        return specs.build_spec(model=model, technique=technique, family=family,
                                params=params, **fields)
    except TypeError as e:
        raise BadInput(f"{where}: {e}") from None
    except BadInput as e:
        raise BadInput(f"{where}: {e}") from None


def _study(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise BadInput(f"{where} [study]: must be a table of key = value")
    unknown = sorted(set(table) - set(_STUDY_KEYS))
    if unknown:
        raise BadInput(f"{where} [study]: unknown key(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(sorted(_STUDY_KEYS))}")
    for key, kind in _STUDY_KEYS.items():
        value = table.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadInput(f"{where} [study]: {key} must be a {kind.__name__}, got {value!r}")
    if "repeats" in table:
        check_repeats(table["repeats"], f"{where} [study]: repeats")
    return table


def check_repeats(value: int, what: str = "repeats") -> int:
    """`value` if it is a sane repeat count (1 to MAX_REPEATS), else BadInput."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEATS:
        raise BadInput(f"{what} must be an integer from 1 to {MAX_REPEATS}, got {value!r}")
    return value


def parse_sweep(text: str, where: str) -> SweepFile:
    """Parse and validate a sweep file's text; every problem names where it is (`where`
    is the file's name in messages)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"sweep file {where} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"study", "defaults", "matrix", "run"})
    if unknown:
        raise BadInput(f"{where}: unknown section(s) {', '.join(unknown)}; "
                       "use [study], [defaults], [[matrix]], [[run]]")
    study = _study(doc.get("study", {}), where)
    defaults = _options(doc.get("defaults", {}), f"{where} [defaults]")
    for section in ("matrix", "run"):
        if not isinstance(doc.get(section, []), list):
            raise BadInput(f"{where}: `{section}` must be an array of tables: [[{section}]]")
    pairs: list[RunSpec] = []
    for i, m in enumerate(doc.get("matrix", [])):
        where_m = f"{where} [[matrix]] #{i + 1}"
        opts = {**defaults, **_options(m, where_m)}
        models, techniques = m.get("models"), m.get("techniques")
        if not isinstance(models, list) or not isinstance(techniques, list) or not models \
                or not techniques:
            raise BadInput(f"{where_m}: needs non-empty lists `models` and `techniques`")
        sizes = m.get("batch_sizes") or [opts.get("batch_size")]
        if not isinstance(sizes, list):
            raise BadInput(f"{where_m}: `batch_sizes` must be a list of integers")
        for model in models:
            for technique in techniques:
                for bs in sizes:
                    pairs.append(_spec(model, technique, {**opts, "batch_size": bs}, where_m))
    for i, r in enumerate(doc.get("run", [])):
        where_r = f"{where} [[run]] #{i + 1}"
        opts = _options(r, where_r)
        pairs.append(_spec(r.get("model"), r.get("technique"), {**defaults, **opts}, where_r))
    if not pairs:
        raise BadInput(f"{where}: no runs; add a [[matrix]] or [[run]] table")
    return SweepFile(tuple(pairs), study.get("name"), study.get("description"),
                     int(study.get("repeats", 1)))


def expand(sweep: SweepFile, repeats: int | None = None, device: str | None = None
           ) -> list[RunSpec]:
    """The runs of a sweep: each pair `repeats` times (default: the file's), the k-th
    repeat with seed + k, all on `device` when given; run ids unique within the sweep.
    Queued repeat by repeat (every pair once, then every pair again, ...), so a sweep cut
    short has its first pass whole rather than some pairs three times and others never.

    Raises:
        BadInput: A bad repeat count or device.
    """
    n = sweep.repeats if repeats is None else check_repeats(repeats, "--repeats")
    out: list[RunSpec] = []
    seen: set[str] = set()
    for k in range(n):
        for pair in sweep.pairs:
            try:
                spec = replace(pair, seed=pair.seed + k,
                               device=pair.device if device is None else device)
            except ProtocolError as e:
                raise BadInput(str(e)) from None
            # Run ids are made from the clock: make them unique within one sweep.
            rid, m = spec.run_id, 1
            while rid in seen:
                m += 1
                rid = f"{spec.run_id}-{m}"
            seen.add(rid)
            out.append(spec if rid == spec.run_id else replace(spec, run_id=rid))
    return out


def load_sweep(path: Path) -> list[RunSpec]:
    """Parse and validate a sweep file and expand it (its `[study] repeats`, if any)."""
    return expand(read_sweep(path))


def read_sweep(path: Path) -> SweepFile:
    """Parse and validate a sweep file; every problem names where it is."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read sweep file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"sweep file {path} is not valid TOML: {e}") from None
    return parse_sweep(text, str(path))
