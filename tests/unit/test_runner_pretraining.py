"""The pretraining family's pure parts: config, technique -> switches, schedule, matching."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from profiling.backends.energy import energy_counter
from runners.errors import BadInput
from runners.families.base import RunContext, family_class
from runners.families.pretraining import PretrainingFamily, _to_tensor
from runners.families.pretraining_config import PretrainingConfig, lr_at
from runners.models import baselines, catalog
from runners.protocol import Event, RunSpec
from runners.system.eventlog import EventLog
from runners.techniques.architecture import BASELINE, VARIANTS, decoder_config, decoder_rule


def _spec(**kw: object) -> RunSpec:
    base: dict[str, object] = dict(run_id="p1", family="pretraining", technique="gqa",
                                   model="tiny", device="cpu")
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_family_is_registered_and_covers_the_catalog() -> None:
    assert family_class("pretraining") is PretrainingFamily
    ids = {t.id for t in catalog.techniques() if t.family == "pretraining"}
    assert ids == set(VARIANTS) == PretrainingFamily.techniques
    for t in catalog.techniques():
        if t.family == "pretraining":
            assert VARIANTS[t.id].group == t.group


def test_each_technique_changes_one_dimension_of_the_baseline() -> None:
    for v in VARIANTS.values():
        changed = [name for name in ("attention", "position", "ffn")
                   if getattr(v, name) != getattr(BASELINE, name)]
        if v.baseline is not None:
            assert v.group == "attention_free" and not changed
            continue
        assert len(changed) <= 1
        group_of = {"attention": "attention", "position": "positional_encoding", "ffn": "moe"}
        assert all(group_of[c] == v.group for c in changed)
    same = [v.id for v in VARIANTS.values() if v.baseline is None and
            (v.attention, v.position, v.ffn) == ("gqa", "rope", "dense")]
    assert same == ["gqa", "rope", "dense", "transformer"]  # one baseline, four names


def test_config_defaults_and_set_params() -> None:
    c = PretrainingConfig.from_spec(_spec(params={"lr": "1e-3", "precision": "bf16",
                                                  "moe_match": "expert", "save": "true",
                                                  "peak_tflops": 793}), "cpu")
    assert isinstance(c, PretrainingConfig)
    assert (c.lr, c.precision, c.moe_match, c.save, c.peak_tflops) == (
        1e-3, "bf16", "expert", True, 793.0)
    d = PretrainingConfig.from_spec(_spec(), "cpu")
    assert isinstance(d, PretrainingConfig)
    assert (d.precision, d.experts, d.top_k, d.moe_match, d.eval_tokens) == (
        "auto", 8, 2, "flops", 4096)


@pytest.mark.parametrize(("params", "match"), [
    ({"precision": "fp8"}, "unknown precision"),
    ({"moe_match": "params"}, "unknown moe_match"),
    ({"top_k": 9}, "top_k"),
    ({"lr": 0}, "lr must be positive"),
    ({"beta2": 1.0}, "beta2"),
    ({"eval_tokens": 1}, "eval_tokens"),
    ({"lernrate": 1}, r"unknown --set parameter"),
])
def test_config_rejects_bad_params(params: dict[str, object], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        PretrainingConfig.from_spec(_spec(params=params), "cpu")


def _family(tmp_path: Path, **kw: object) -> PretrainingFamily:
    spec = _spec(**kw)
    _, card = catalog.resolve("pretraining", spec.technique, spec.model)
    config = PretrainingConfig.from_spec(spec, "cpu")
    log = EventLog(tmp_path / "events.jsonl")
    return PretrainingFamily(config, card, RunContext(spec, tmp_path, tmp_path, "cpu", log))  # type: ignore[arg-type]


def test_validate_refuses_real_weights_and_long_sequences(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="random weights"):
        _family(tmp_path, model="smollm2-135m").validate()
    with pytest.raises(BadInput, match="exceeds"):
        _family(tmp_path, seq_len=5000).validate()
    _family(tmp_path, seq_len=4096).validate()


def test_decoder_config_follows_the_card() -> None:
    card = catalog.model_card("qwen2.5-0.5b")
    cfg = decoder_config(card, VARIANTS["mqa"], 2048)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
            cfg.ffn_hidden) == (151936, 896, 24, 14, 2, 4864)
    assert (cfg.attention, cfg.kv_heads, cfg.rope_theta, cfg.qkv_bias, cfg.max_seq_len) == (
        "mqa", 1, 1e6, True, 2048)
    assert decoder_config(card, VARIANTS["moe"], 64, moe_match="expert").moe_hidden == 4864
    assert decoder_config(card, VARIANTS["moe"], 64).moe_hidden == 2432
    assert not decoder_config(catalog.model_card("llama-3.2-1b"), BASELINE, 64).qkv_bias


def test_matching_rules_name_what_changed() -> None:
    card = catalog.model_card("tiny")

    def rule(technique: str, **kw: object) -> str:
        v = VARIANTS[technique]
        return decoder_rule(v, decoder_config(card, v, 64, **kw))  # type: ignore[arg-type]

    assert rule("mqa").startswith("equal-shape") and "one head" in rule("mqa")
    assert "no parameters" in rule("nope") and "position table" in rule("learned")
    assert rule("moe").startswith("equal-FLOP")
    assert rule("moe", moe_match="expert").startswith("expert-sized")


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    lrs = [lr_at(s, 20, 1.0, 4, 0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lrs[-1] == pytest.approx(0.1)
    assert lr_at(0, 1, 3e-4, 0, 0.1) == pytest.approx(3e-4 * 0.1)  # one step: the end


@pytest.mark.parametrize("kind", baselines.KINDS)
def test_baselines_match_the_decoder_parameters(kind: str) -> None:
    card = catalog.model_card("tiny")
    import torch

    from runners.models.decoder import Decoder

    with torch.device("meta"):
        target = Decoder(decoder_config(card, BASELINE, 64)).param_counts().total
    width = baselines.matched_width(kind, card, 64, target)
    assert width % baselines.WIDTH_MULTIPLE == 0
    assert baselines.count_params(kind, card, 64, width) == pytest.approx(target, rel=0.01)


def test_uint16_ids_reach_the_device_unchanged() -> None:
    ids = array("H", [0, 1, 259, 40000, 65535])
    assert _to_tensor(ids, "cpu").tolist() == [0, 1, 259, 40000, 65535]
    assert _to_tensor([3, 4], "cpu").tolist() == [3, 4]


def test_metrics_come_from_the_measured_steps_and_every_null_says_why(tmp_path: Path) -> None:
    family = _family(tmp_path, batch_size=2, seq_len=16, warmup=0, steps=2,
                     params={"eval_tokens": 0, "peak_tflops": 2.0})
    family.validate()
    try:
        result = family.run()
    finally:
        family.ctx.log.close()
    events = [Event.from_json(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    got = {m.name: m for m in result.metrics}
    info = result.info
    window = next(e for e in events if e.kind == "window" and e.get("name") == "measure")
    steps = [e for e in events if e.kind == "step"]
    seconds, tokens = window.get("elapsed_s"), 2 * 2 * 16
    assert [e.get("phase") for e in steps] == ["measure", "measure"]
    assert got["al_s"].value == pytest.approx(sum(e.get("latency_s") for e in steps) / 2)
    assert got["loss"].value == pytest.approx(sum(e.get("loss") for e in steps) / 2)
    assert got["tt"].value == pytest.approx(tokens / (info["total_params"] * seconds))
    # MFU over the given peak: 6 N_flop + 12 L d_attn T per trained token (4 layers, 256 wide)
    assert info["flops_per_token"] == 6 * info["flop_params"] + 12 * 4 * 256 * 16
    assert (got["mfu"].value, got["mfu"].source) == (
        pytest.approx(tokens / seconds * info["flops_per_token"] / 2e12), "runner")
    assert (got["eval_ppl"].value, got["eval_ppl"].source, got["eval_ppl"].note) == (
        None, "none", "not scored: eval_tokens=0")
    counter = energy_counter("cpu")
    if counter.reader is None:  # no RAPL here: every energy metric NULL with the reason
        for name in ("energy_j", "aec_w", "j_per_token"):
            assert (got[name].value, got[name].source, got[name].note) == (
                None, "none", counter.note)
        assert info["energy_note"] == window.get("energy_note") == counter.note
    for m in result.metrics:
        assert (m.value is None) == (m.source == "none") and (m.value is None) <= bool(m.note)
