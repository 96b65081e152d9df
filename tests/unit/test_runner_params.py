"""The `--set` schema and the checks the launcher runs before a runner starts (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import efficientllm_data
import pytest

from runners import params, preflight
from runners.errors import BadInput
from runners.protocol import RunSpec

TINY = efficientllm_data.find_model("tiny")


def _spec(technique: str = "lora", family: str = "finetuning", **kw: Any) -> RunSpec:
    return RunSpec(run_id="r", family=family, technique=technique, model="tiny", **kw)


# -- one parameter at a time ------------------------------------------------------------------

def test_unknown_key_names_every_valid_key() -> None:
    with pytest.raises(BadInput) as e:
        params.resolve("pretraining", {"bogus_key": 1, "lr": 1e-3})
    assert str(e.value) == (
        "unknown --set parameter(s) for pretraining: bogus_key (valid: aux_loss_coef, beta2, "
        "checkpointing, compile, eval_tokens, experts, grad_clip, loss_chunk_tokens, "
        "loss_kernel, lr, lr_warmup_steps, measure_peak, min_lr_ratio, moe_match, nsa_block, "
        "nsa_blocks, nsa_window, peak_tflops, precision, recurrence, save, sharding, threads, "
        "top_k, "
        "weight_decay)")


def test_wrong_type() -> None:
    with pytest.raises(BadInput) as e:
        params.resolve("finetuning", {"rank": "abc"})
    assert str(e.value) == "parameter 'rank': expected int, got 'abc'"
    with pytest.raises(BadInput, match=r"^parameter 'rank': expected int, got 2\.5$"):
        params.resolve("finetuning", {"rank": 2.5})
    with pytest.raises(BadInput, match=r"^parameter 'save': expected bool, got 'maybe'$"):
        params.resolve("finetuning", {"save": "maybe"})


def test_value_not_in_choices() -> None:
    with pytest.raises(BadInput) as e:
        params.resolve("inference", {"engine": "warp"})
    assert str(e.value) == ("unknown engine 'warp' (choose from auto, loop, eager, static, "
                            "graph, compile, fused)")
    with pytest.raises(BadInput) as e:
        params.resolve("finetuning", {"compile": "max-autotune"})
    assert str(e.value) == ("unknown compile 'max-autotune' (choose from auto, off, layers, "
                            "model; or true/on/yes/1/false/no/0/none)")


@pytest.mark.parametrize(("family", "raw", "message"), [
    ("finetuning", {"rank": 0}, "rank must be at least 1, got 0"),
    ("finetuning", {"alpha": 0}, "alpha must be positive, got 0.0"),
    ("finetuning", {"dropout": 1.0}, "dropout must be within [0, 1), got 1.0"),
    ("finetuning", {"min_lr_ratio": 1.5}, "min_lr_ratio must be within [0, 1], got 1.5"),
    ("pretraining", {"beta2": 1}, "beta2 must be within (0, 1), got 1.0"),
    ("pretraining", {"lr_warmup_steps": -2}, "lr_warmup_steps must be at least -1, got -2"),
    ("inference", {"eval_tokens": 1}, "eval_tokens must be at least 2 (or 0), got 1"),
    ("inference", {"threads": 0}, "threads must be at least 1, got 0"),
])
def test_value_out_of_range(family: str, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as e:
        params.resolve(family, raw)
    assert str(e.value) == message


@pytest.mark.parametrize(("family", "raw", "message"), [
    ("inference", {"engine": "compile", "compile_mode": "none"},
     "compile_mode=none runs the fused step uncompiled: none only with engine=fused, not "
     "compile"),
    ("finetuning", {"rank": 8, "adalora_init_r": 4}, "adalora_init_r must be >= rank (8), got 4"),
    ("pretraining", {"top_k": 9}, "need 1 <= top_k <= experts, got top_k=9, experts=8"),
    ("finetuning", {"target_modules": "q_proj;rm -rf"},
     "target_modules must be 'all-linear' or comma-separated module names, got 'q_proj;rm -rf'"),
])
def test_rules_across_parameters(family: str, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as e:
        params.resolve(family, raw)
    assert str(e.value) == message


def test_values_are_typed_defaulted_and_canonical() -> None:
    got = params.resolve("finetuning", {"rank": "8", "compile": True, "precision": " BF16 ",
                                        "target_modules": "q_proj, v_proj"})
    assert (got["rank"], got["compile"], got["precision"]) == (8, "layers", "bf16")
    assert got["target_modules"] == "q_proj, v_proj"  # checked, kept as written
    assert (got["alpha"], got["lr"], got["threads"]) == (128.0, None, None)
    assert list(got) == [p.name for p in params.FINETUNING]
    assert params.resolve("inference", {"eval_tokens": 0})["eval_tokens"] == 0  # the `also`
    assert params.resolve("pretraining", {"compile": "TRUE"})["compile"] == "true"
    assert params.of("nonsense") == {}


def test_every_parameter_has_a_one_line_doc_and_a_default_in_range() -> None:
    for family, table in params.SCHEMA.items():
        assert table, family
        for p in table.values():
            assert p.doc and "\n" not in p.doc and len(p.doc) <= 100, (family, p.name)
            assert p.kind in (bool, int, float, str), (family, p.name)
            assert p.check(p.default) == p.default, (family, p.name)
            assert not p.choices or p.default in p.choices, (family, p.name)


def test_range_text() -> None:
    by = params.SCHEMA
    assert by["finetuning"]["rank"].range_text() == "at least 1"
    assert by["finetuning"]["lr"].range_text() == "positive"
    assert by["finetuning"]["heldout_fraction"].range_text() == "within [0, 1)"
    assert by["pretraining"]["beta2"].range_text() == "within (0, 1)"
    assert by["pretraining"]["eval_tokens"].range_text() == "at least 2 (or 0)"


# -- the pair against the model card -----------------------------------------------------------

SMOLLM = efficientllm_data.find_model("smollm2-135m")


@pytest.mark.parametrize(("family", "technique", "card", "lengths", "values", "message"), [
    ("pretraining", "mla", SMOLLM, (64, 32), None,
     "pretraining trains from random weights; smollm2-135m is a real-weights model (choose a "
     "shape: tiny, qwen2.5-0.5b, ...)"),
    ("pretraining", "gqa", TINY, (4097, 32), None, "seq_len 4097 exceeds tiny's 4096 positions"),
    ("inference", "fp32", TINY, (4090, 7), None,
     "seq_len + new_tokens = 4097 exceeds tiny's 4096 positions"),
    ("inference", "fp32", TINY, (64, 32), {"dtype": "bf16"},
     "--set dtype applies to quantized techniques; fp32 runs in fp32"),
    ("finetuning", "prompt-tuning", TINY, (4080, 32), None,
     "seq_len 4080 + 20 virtual tokens exceeds tiny's 4096 positions"),
    ("finetuning", "freeze", TINY, (64, 32), {"freeze_k": 5}, "freeze_k 5 exceeds tiny's 4 blocks"),
    ("finetuning", "lora", TINY, (1, 32), None,
     "seq_len must be at least 2 to have a next token to predict"),
])
def test_pair_problems(family: str, technique: str, card: dict[str, Any],
                       lengths: tuple[int, int], values: dict[str, Any] | None,
                       message: str) -> None:
    seq_len, new_tokens = lengths
    assert params.pair_problem(family, technique, card, seq_len=seq_len,
                               new_tokens=new_tokens, values=values) == message


def test_pairs_at_the_limits_are_fine() -> None:
    assert params.pair_problem("inference", "int8", TINY, seq_len=4064, new_tokens=32,
                               values={"dtype": "bf16"}) is None
    assert params.pair_problem("finetuning", "prompt-tuning", TINY, seq_len=4076,
                               new_tokens=999) is None
    assert params.pair_problem("finetuning", "freeze", TINY, seq_len=64, new_tokens=0,
                               values={"freeze_k": 4}) is None
    assert params.pair_problem("inference", "fp32", SMOLLM, seq_len=64, new_tokens=32) is None


# -- the whole spec, with its dataset ----------------------------------------------------------

def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD_SFT = json.dumps({"prompt": "p", "response": "r"})


def test_validate_spec_returns_the_typed_parameters() -> None:
    got = preflight.validate_spec(_spec(params={"rank": 8}), TINY)
    assert (got["rank"], got["alpha"]) == (8, 128.0)
    with pytest.raises(BadInput, match="^pretraining trains from random weights"):
        preflight.validate_spec(RunSpec(run_id="r", family="pretraining", technique="mla",
                                        model="smollm2-135m"), SMOLLM)
    # a local model dir has no catalog card: the runner checks the pair once it reads one
    assert preflight.validate_spec(RunSpec(run_id="r", family="pretraining", technique="mla",
                                           model="/models/x"), None)["lr"] == 6e-4


def test_malformed_sft_jsonl_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD_SFT, "", json.dumps({"prompt": "p"})])
    with pytest.raises(BadInput) as e:
        preflight.validate_spec(_spec(dataset=path), TINY)
    assert str(e.value) == (f"dataset {path!r}: line 3: field 'response' must be a string, "
                            "got NoneType")
    path = _write(tmp_path / "broken.jsonl", [GOOD_SFT, '{"prompt": '])
    with pytest.raises(BadInput, match=r": line 2: not valid JSON \(Expecting value"):
        preflight.validate_spec(_spec(dataset=path), TINY)


def test_sft_checks_only_the_head(tmp_path: Path) -> None:
    lines = [GOOD_SFT] * 200 + ["not json"]
    path = _write(tmp_path / "long.jsonl", lines)
    preflight.validate_spec(_spec(dataset=path), TINY)  # line 201 is the runner's to find


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.jsonl", b"", "is empty"),
    ("blank.jsonl", b"\n \n", "has no examples"),
    ("data.csv", b"a,b\n", "unknown format '.csv'"),
    ("latin.jsonl", GOOD_SFT.encode() + b"\n\xe9t\xe9\n", "line 2: not UTF-8 text"),
    ("fake.parquet", b"PAR0 not parquet", "is not a parquet file"),
])
def test_finetuning_dataset_refused(tmp_path: Path, name: str, content: bytes,
                                    message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadInput, match=message):
        preflight.validate_spec(_spec(dataset=str(tmp_path / name)), TINY)


def test_text_datasets(tmp_path: Path) -> None:
    text = _write(tmp_path / "t.txt", ["plain text is fine for inference"] * 3)
    preflight.validate_spec(_spec("fp32", "inference", dataset=text), TINY)
    preflight.validate_spec(_spec("gqa", "pretraining", dataset=text), TINY)
    (tmp_path / "bad.txt").write_bytes(b"one\ntwo\nthr\xffee\n")
    for technique, family in (("fp32", "inference"), ("gqa", "pretraining")):
        with pytest.raises(BadInput, match=r"bad\.txt': line 3: not UTF-8 text$"):
            preflight.validate_spec(_spec(technique, family, dataset=str(tmp_path / "bad.txt")),
                                    TINY)
    records = _write(tmp_path / "docs.jsonl", [json.dumps({"text": "a"}), json.dumps([1, 2])])
    with pytest.raises(BadInput, match=r"^docs\.jsonl line 2 has no text field"):
        preflight.validate_spec(_spec("gqa", "pretraining", dataset=records), TINY)
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(BadInput, match="is not a readable file"):
        preflight.validate_spec(_spec("fp32", "inference", dataset=missing), TINY)
