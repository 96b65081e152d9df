"""The family configs and the runners' own constants agree with runners.params, the schema the
launcher checks before a runner starts: every key, type, default and choice."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from runners import params
from runners.engines import compilation, decode, training
from runners.errors import BadInput
from runners.families.base import COMMON_FIELDS, FamilyConfig
from runners.families.finetuning_config import FinetuningConfig
from runners.families.inference import DTYPES, InferenceConfig
from runners.families.pretraining_config import PretrainingConfig
from runners.models import baselines
from runners.techniques import architecture, peft_methods, quantize

CONFIGS = (InferenceConfig, FinetuningConfig, PretrainingConfig)


def _declared(config: type[FamilyConfig]) -> list[tuple[str, type, object]]:
    """(name, `--set` kind, default) of each parameter field, as the dataclass declares it."""
    out = []
    for f in fields(config):
        if f.name in COMMON_FIELDS:
            continue
        assert f.default is not MISSING, f.name
        out.append((f.name, f.metadata.get("kind", type(f.default)), f.default))
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.family)
def test_config_fields_are_the_schema(config: type[FamilyConfig]) -> None:
    schema = [(p.name, p.kind, p.default) for p in params.of(config.family).values()]
    assert _declared(config) == schema
    assert config.param_kinds() == {name: kind for name, kind, _ in schema}


def test_every_family_has_a_config() -> None:
    assert sorted(c.family for c in CONFIGS) == sorted(params.SCHEMA)


def test_runner_constants_are_the_schema_choices() -> None:
    by = params.SCHEMA
    assert by["inference"]["engine"].choices == ("auto", *decode.ENGINES)
    assert by["inference"]["compile_mode"].choices == decode.FusedEngine.modes
    assert "none" not in decode.CompileEngine.modes  # the rule of compile_mode=none
    assert by["inference"]["dtype"].choices == ("auto", *DTYPES)
    assert params.FLOAT_TECHNIQUES == tuple(DTYPES)
    assert by["inference"]["exclude"].default == ",".join(quantize.DEFAULT_EXCLUDE)
    assert by["finetuning"]["precision"].choices == ("auto", *training.PRECISIONS)
    assert by["finetuning"]["compile"].choices == compilation.COMPILE_MODES
    assert dict(by["finetuning"]["compile"].aliases) == compilation.COMPILE_ALIASES
    assert by["finetuning"]["freeze_k"].default == peft_methods.DEFAULT_FREEZE_K
    assert by["pretraining"]["moe_match"].choices == architecture.MOE_MATCHES
    assert by["pretraining"]["recurrence"].choices == baselines.RECURRENCES


def test_configs_store_canonical_values() -> None:
    common = dict(run_id="r", technique="lora", model="tiny", device="cpu", seed=0,
                  batch_size=1, seq_len=8, new_tokens=1, steps=1, warmup=0, dataset=None)
    assert FinetuningConfig(**common, compile="ON", precision="BF16").compile == "layers"  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="^rank must be at least 1, got 0$"):
        FinetuningConfig(**common, rank=0)  # type: ignore[arg-type]
