"""Sweep files: a TOML matrix of model x technique pairs expanded into validated RunSpecs.

```toml
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
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import specs
from runners.protocol import RunSpec

_OPTIONS = {"device", "steps", "warmup", "batch_size", "seq_len", "new_tokens", "seed",
            "dataset", "set", "family"}


def _options(table: dict[str, Any], where: str) -> dict[str, Any]:
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
    try:
        return specs.build_spec(model=model, technique=technique, family=family,
                                   params=params, **fields)
    except TypeError as e:
        raise BadInput(f"{where}: {e}") from None
    except BadInput as e:
        raise BadInput(f"{where}: {e}") from None


def load_sweep(path: Path) -> list[RunSpec]:
    """Parse and validate a sweep file; every problem names where it is."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read sweep file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"sweep file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"defaults", "matrix", "run"})
    if unknown:
        raise BadInput(f"{path}: unknown section(s) {', '.join(unknown)}; "
                       "use [defaults], [[matrix]], [[run]]")
    defaults = _options(doc.get("defaults", {}), f"{path} [defaults]")
    specs: list[RunSpec] = []
    for i, m in enumerate(doc.get("matrix", [])):
        where = f"{path} [[matrix]] #{i + 1}"
        opts = {**defaults, **_options(m, where)}
        models, techniques = m.get("models"), m.get("techniques")
        if not isinstance(models, list) or not isinstance(techniques, list) or not models \
                or not techniques:
            raise BadInput(f"{where}: needs non-empty lists `models` and `techniques`")
        sizes = m.get("batch_sizes") or [opts.get("batch_size")]
        for model in models:
            for technique in techniques:
                for bs in sizes:
                    specs.append(_spec(model, technique, {**opts, "batch_size": bs}, where))
    for i, r in enumerate(doc.get("run", [])):
        where = f"{path} [[run]] #{i + 1}"
        specs.append(_spec(r.get("model"), r.get("technique"),
                           {**defaults, **_options(r, where)}, where))
    if not specs:
        raise BadInput(f"{path}: no runs; add a [[matrix]] or [[run]] table")
    # Run ids are made from the clock: make them unique within one sweep.
    seen: set[str] = set()
    out = []
    for spec in specs:
        rid = spec.run_id
        n = 1
        while rid in seen:
            n += 1
            rid = f"{spec.run_id}-{n}"
        seen.add(rid)
        out.append(spec if rid == spec.run_id else RunSpec.from_dict({**spec.to_dict(),
                                                                     "run_id": rid}))
    return out
