"""Sweep files with a [study] table, repeats by seed, and the shipped studies (paper,
ci-tiny): parsed, validated and expanded without running anything."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import study
from efficientllm_tui.runs.specs import technique_available
from efficientllm_tui.runs.sweep import expand, load_sweep, parse_sweep, read_sweep

ROOT = Path(__file__).resolve().parents[2]

MINI = """
[study]
name = "mini"
description = "two pairs"
repeats = 3

[defaults]
device = "cpu"
steps = 2
seed = 7

[[matrix]]
models = ["tiny"]
techniques = ["fp32", "gqa"]
"""


def test_study_table_and_repeats_by_seed() -> None:
    sweep = parse_sweep(MINI, "mini.toml")
    assert (sweep.name, sweep.description, sweep.repeats) == ("mini", "two pairs", 3)
    assert [(p.technique, p.seed) for p in sweep.pairs] == [("fp32", 7), ("gqa", 7)]
    runs = expand(sweep)
    assert [(r.technique, r.seed) for r in runs] == [
        ("fp32", 7), ("gqa", 7), ("fp32", 8), ("gqa", 8), ("fp32", 9), ("gqa", 9)]
    assert len({r.run_id for r in runs}) == 6
    # repeats differ only by seed (and id): the report's test for "the same pair"
    base = {k: v for k, v in runs[0].to_dict().items() if k not in ("run_id", "seed")}
    assert all({k: v for k, v in r.to_dict().items() if k not in ("run_id", "seed")} == base
               for r in runs[::2])
    # --repeats and --device override the file's
    again = expand(sweep, repeats=1, device="cuda:1")
    assert [(r.seed, r.device) for r in again] == [(7, "cuda:1"), (7, "cuda:1")]


def test_old_sweep_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[defaults]\ndevice = "cpu"\n[[matrix]]\nmodels = ["tiny"]\n'
                    'techniques = ["fp32", "bf16"]\nbatch_sizes = [1, 2]\n'
                    '[[run]]\nmodel = "tiny"\ntechnique = "fp32"\nnew_tokens = 4\n')
    sweep = read_sweep(path)
    assert (sweep.name, sweep.repeats) == (None, 1)
    runs = load_sweep(path)
    assert [(r.technique, r.batch_size, r.new_tokens) for r in runs] == [
        ("fp32", 1, 32), ("fp32", 2, 32), ("bf16", 1, 32), ("bf16", 2, 32), ("fp32", 1, 4)]
    assert len({r.run_id for r in runs}) == 5


@pytest.mark.parametrize(("text", "message"), [
    ('[study]\nrepeats = "3"\n[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n',
     "x.toml [study]: repeats must be a int, got '3'"),
    ('[study]\nrepeats = 0\n[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n',
     "x.toml [study]: repeats must be an integer from 1 to 100, got 0"),
    ('[study]\ncolour = "red"\n[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n',
     "x.toml [study]: unknown key(s) colour; allowed: description, name, repeats"),
    ('[[matrix]]\nmodels = ["tiny"]\ntechniques = ["fp32", "int3"]\n',
     "x.toml [[matrix]] #1: unknown technique 'int3'"),
    ('[[matrix]]\nmodels = ["tiny"]\ntechniques = ["fp32"]\nsteps = "8"\n',
     "x.toml [[matrix]] #1: steps must be a positive integer, got '8'"),
    ('[[matrix]]\nmodels = "tiny"\ntechniques = ["fp32"]\n',
     "x.toml [[matrix]] #1: needs non-empty lists `models` and `techniques`"),
    ('[[matrix]]\nmodels = ["tiny"]\ntechniques = ["fp32"]\nbatch_sizes = 4\n',
     "x.toml [[matrix]] #1: `batch_sizes` must be a list of integers"),
    ('matrix = 3\n', "x.toml: `matrix` must be an array of tables: [[matrix]]"),
    ('[study]\nname = "empty"\n', "x.toml: no runs; add a [[matrix]] or [[run]] table"),
    ('[study\n', "sweep file x.toml is not valid TOML"),
])
def test_bad_sweep_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_sweep(text, "x.toml")
    assert str(e.value).startswith(message), str(e.value)


def test_bad_repeats_and_device_at_expand() -> None:
    sweep = parse_sweep(MINI, "mini.toml")
    with pytest.raises(BadInput, match=r"^--repeats must be an integer from 1 to 100, got 0$"):
        expand(sweep, repeats=0)
    with pytest.raises(BadInput, match=r"^invalid device 'gpu' \(use auto, cpu or cuda:N\)$"):
        expand(sweep, device="gpu")


def _needs(techniques: set[str]) -> None:
    missing = sorted(t for t in techniques if not technique_available(t))
    if missing:  # a technique another change adds; the study is refused whole until then
        pytest.skip(f"technique(s) {', '.join(missing)} not in this catalog yet")


def _techniques(name: str) -> set[str]:
    doc = tomllib.loads((ROOT / "data" / "sweeps" / f"{name}.toml").read_text())
    return {t for m in doc.get("matrix", []) for t in m["techniques"]}


def test_shipped_studies_are_package_data() -> None:
    assert study.shipped() == ["ci-tiny", "cpu", "paper"]
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["efficientllm_data"]
    shipped = sorted(p.relative_to(ROOT / "data").as_posix()
                     for p in (ROOT / "data" / "sweeps").glob("*.toml"))
    assert shipped == ["sweeps/ci-tiny.toml", "sweeps/cpu.toml", "sweeps/paper.toml"]
    assert all(any(Path(s).match(g) for g in globs) for s in shipped)


def test_cpu_study_scores_real_weights_and_pretrains_from_scratch() -> None:
    _needs(_techniques("cpu"))
    name, source, sweep = study.load("cpu")
    assert (name, source, sweep.repeats) == ("cpu", "study:cpu", 3)
    assert {p.device for p in sweep.pairs} == {"cpu"}
    from runners.models import catalog

    by_group: dict[str, set[str]] = {}
    for p in sweep.pairs:
        by_group.setdefault(catalog.technique(p.technique).group, set()).add(p.model)
    # quality groups on the real SmolLM2 weights, scored on the suite; pretraining on tiny
    assert by_group == {"bit_width": {"smollm2-135m"}, "peft": {"smollm2-135m"},
                        "attention": {"tiny"}, "positional_encoding": {"tiny"}, "moe": {"tiny"}}
    assert all(p.params.get("quality") == "suite" for p in sweep.pairs
               if p.model == "smollm2-135m")
    assert {p.dataset for p in sweep.pairs if p.model == "tiny"} == {"pydoc"}


def test_ci_tiny_covers_every_group_on_tiny_cpu() -> None:
    _needs(_techniques("ci-tiny"))
    name, source, sweep = study.load("ci-tiny")
    assert (name, source, sweep.repeats) == ("ci-tiny", "study:ci-tiny", 1)
    assert {p.model for p in sweep.pairs} == {"tiny", "tiny-vlm"}
    assert {p.device for p in sweep.pairs} == {"cpu"}
    # the vision pair answers the shipped image questions (its own workload: task vqa)
    assert [(p.technique, p.params.get("task")) for p in sweep.pairs
            if p.model == "tiny-vlm"] == [("int8", "vqa")]
    assert max(p.steps + p.warmup for p in sweep.pairs) == 3
    from runners.models import catalog

    groups = {catalog.technique(p.technique).group for p in sweep.pairs}
    assert groups == {"bit_width", "peft", "attention", "positional_encoding", "moe",
                      "attention_free"}
    assert len(sweep.pairs) == 27


def test_paper_study_has_the_papers_methods_at_its_sizes() -> None:
    _needs(_techniques("paper"))
    name, _, sweep = study.load("paper")
    assert (name, sweep.repeats) == ("paper", 3)
    pairs = {(p.family, p.model, p.technique): p for p in sweep.pairs}
    pretraining = {t for f, m, t in pairs if f == "pretraining" and m == "qwen2.5-0.5b"}
    assert pretraining == {"mqa", "gqa", "mla", "nsa", "rope", "absolute", "learned",
                           "relative", "dense", "moe", "transformer", "mamba", "pythia",
                           "rwkv"}
    # one token budget for every pretraining variant
    assert {(p.batch_size, p.seq_len, p.steps) for (f, _, _), p in pairs.items()
            if f == "pretraining"} == {(8, 1024, 24)}
    arms = {"lora", "lora-plus", "rslora", "dora", "pissa", "freeze", "full"}
    for model in ("smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert arms <= {t for f, m, t in pairs if f == "finetuning" and m == model}
    for model in ("smollm2-135m", "qwen2.5-1.5b", "qwen2.5-7b"):
        assert {t for f, m, t in pairs if f == "inference" and m == model} == {
            "bf16", "fp16", "int8", "int4", "fp8"}
    # the vision part: bit-widths of a VLM's language model, answering image questions
    assert {(t, p.params.get("task")) for (f, m, t), p in pairs.items()
            if m == "smolvlm-256m"} == {("bf16", "vqa"), ("int8", "vqa"), ("int4", "vqa")}
    # pretraining reads a real corpus (the shipped 14 KB text would be read 16 times over)
    assert {p.dataset for (f, _, _), p in pairs.items() if f == "pretraining"} == {"pydoc"}
    # quality only where the weights are real
    scored = {(m, t) for (_, m, t), p in pairs.items() if p.params.get("quality") == "suite"}
    assert {m for m, _ in scored} == {"smollm2-135m"}
    assert len(expand(sweep)) == 3 * len(sweep.pairs) == 183


def test_study_by_name_or_file(tmp_path: Path) -> None:
    path = tmp_path / "my-study.toml"
    path.write_text('[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n')
    name, source, sweep = study.load(str(path))
    assert (name, source, len(sweep.pairs)) == ("my-study", str(path.absolute()), 1)
    with pytest.raises(BadInput, match=r"^unknown study 'nope'; shipped: ci-tiny, cpu, paper "
                       r"\(or give a sweep FILE.toml\)$"):
        study.load("nope")
    sid = study.study_id("paper", 1_800_000_000_000_000_000)
    assert re.fullmatch(r"study-paper-20270115-080000-[0-9a-f]{6}", sid), sid
