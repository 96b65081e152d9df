"""The pretraining runner's run-time options (compile, checkpointing, loss options) on CPU.

Nothing here compiles: torch.compile on CPU takes tens of seconds. `compile=auto` must resolve
off on CPU, an explicit request must be plumbed to the decoder, and a compiler failure must
leave a run that trains eagerly with the reason in its info (simulated by a failing
`compile_blocks`). The compiled path itself is tested on CUDA (tests/gpu).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from runners.engines.xent import LossOptions, chunked_cross_entropy, xent_chunk
from runners.errors import BadInput
from runners.families.base import RunContext
from runners.families.pretraining import PretrainingFamily
from runners.families.pretraining_config import PretrainingConfig
from runners.models import catalog
from runners.models.decoder import Decoder
from runners.protocol import RunResult, RunSpec
from runners.system.eventlog import EventLog

SHORT = dict(batch_size=2, seq_len=16, warmup=1, steps=2)


def _run(tmp_path: Path, technique: str = "gqa", **params: Any) -> tuple[RunResult, list[dict]]:
    spec = RunSpec(run_id="o1", family="pretraining", technique=technique, model="tiny",
                   device="cpu", params={"eval_tokens": 64, **params},
                   **SHORT)  # type: ignore[arg-type]
    _, card = catalog.resolve("pretraining", technique, "tiny")
    config = PretrainingConfig.from_spec(spec, "cpu")
    log = EventLog(tmp_path / "events.jsonl")
    try:
        family = PretrainingFamily(config, card,  # type: ignore[arg-type]
                                   RunContext(spec, tmp_path, tmp_path, "cpu", log))
        result = family.run()
    finally:
        log.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return result, events


def _losses(events: list[dict]) -> list[float]:
    return [e["loss"] for e in events if e["kind"] == "step"]


def test_switch_values_are_checked_and_normalised() -> None:
    spec = RunSpec(run_id="o", family="pretraining", technique="gqa", model="tiny",
                   device="cpu", params={"compile": "TRUE", "checkpointing": "false"})
    c = PretrainingConfig.from_spec(spec, "cpu")
    assert isinstance(c, PretrainingConfig) and (c.compile, c.checkpointing) == ("true", "false")
    with pytest.raises(BadInput, match=r"unknown compile 'maybe' \(choose from auto, true, fal"):
        PretrainingConfig.from_spec(RunSpec(run_id="o", family="pretraining", technique="gqa",
                                            model="tiny", device="cpu",
                                            params={"compile": "maybe"}), "cpu")


def test_compile_auto_is_off_on_cpu_and_recorded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Decoder, **_: Any) -> str:
        raise AssertionError("compile_blocks must not run on CPU under auto")

    monkeypatch.setattr(Decoder, "compile_blocks", refuse)
    r, events = _run(tmp_path)
    assert r.status == "ok"
    assert r.info["compile"] == {"requested": "auto", "enabled": False}
    assert r.info["activation_checkpointing"] is False
    assert "eager" in r.info["loss_impl"]
    assert not [e for e in events if e["kind"] == "phase" and e["name"] == "compile"]


def test_compile_failure_falls_back_to_eager_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(self: Decoder, **_: Any) -> str:
        calls.append(len(self.blocks))
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(Decoder, "compile_blocks", broken)
    (tmp_path / "eager").mkdir()
    eager, _ = _run(tmp_path / "eager", compile="false")
    (tmp_path / "fell").mkdir()
    r, events = _run(tmp_path / "fell", compile="true")
    assert calls == [4] and r.status == "ok"
    info = r.info["compile"]
    assert info["requested"] == "true" and info["enabled"] is False
    assert "RuntimeError: no compiler here" in info["fallback"]
    assert any(e["kind"] == "log" and "running eager" in e["message"] for e in events)
    assert [e["name"] for e in events if e["kind"] == "window"] == ["warmup", "measure"]
    # The compile pass takes no optimizer step: training is the eager run's, step for step.
    assert _losses(events) == pytest.approx(_losses(
        [json.loads(line) for line in
         (tmp_path / "eager" / "events.jsonl").read_text().splitlines()]), rel=1e-6)
    assert eager.info["compile"]["enabled"] is False


def test_compile_is_refused_for_transformers_baselines(tmp_path: Path) -> None:
    r, _ = _run(tmp_path, "pythia", compile="true")
    assert r.info["compile"]["enabled"] is False
    assert "only the decoder" in r.info["compile"]["reason"]


def test_decoder_checkpointing_trains_the_same_steps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, ev_plain = _run(tmp_path / "a")
    ckpt, ev_ckpt = _run(tmp_path / "b", checkpointing="true")
    assert ckpt.info["activation_checkpointing"] is True
    assert _losses(ev_ckpt) == pytest.approx(_losses(ev_plain), rel=1e-5)


def test_mamba_checkpoints_and_scans_without_fused_kernels(tmp_path: Path) -> None:
    r, events = _run(tmp_path, "mamba")
    assert r.status == "ok"
    assert r.info["activation_checkpointing"] is True  # auto: no mamba_ssm here
    assert "selective_scan" in r.info["kernels"] and "chunked" in r.info["scan"]
    assert all(torch.isfinite(torch.tensor(_losses(events))))


# --- the loss options ------------------------------------------------------------------------


def test_xent_chunk_matches_softmax_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 33) * 3
    y = torch.randint(0, 33, (7,))
    loss, g = xent_chunk(logits, y, torch.float32)
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, reduction="sum").item(), rel=1e-6)
    expected = logits.softmax(-1) - torch.nn.functional.one_hot(y, 33)
    torch.testing.assert_close(g, expected)
    assert xent_chunk(logits, y, None)[1] is None
    huge = torch.zeros(1, 4)
    huge[0, 0] = 1e4  # p_target underflows: capped like the plain path (-log tiny)
    assert xent_chunk(huge, torch.tensor([1]), None)[0].item() == pytest.approx(87.3365, abs=1e-3)


def test_loss_options_path_equals_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from runners.engines import xent

    # The compiled-chunk loop with the chunk function run eagerly (no compile on CPU).
    monkeypatch.setattr(xent, "compiled_xent_chunk", lambda: xent.xent_chunk)
    torch.manual_seed(1)
    h = torch.randn(45, 16, requires_grad=True)
    w = torch.randn(70, 16, requires_grad=True)
    y = torch.randint(0, 70, (45,))
    y[5] = -100
    results = []
    for options in (None, LossOptions(fp32_gemm=True), LossOptions(compiled=True)):
        h.grad = w.grad = None
        total, n = chunked_cross_entropy(h, w, y, chunk_rows=8, options=options)
        total.backward()
        results.append((total.detach(), n, h.grad.clone(), w.grad.clone()))
    t0, n0, gh0, gw0 = results[0]
    for t1, n1, gh1, gw1 in results[1:]:
        assert n0 == n1 == 44
        torch.testing.assert_close(t1, t0)
        torch.testing.assert_close(gh1, gh0)
        torch.testing.assert_close(gw1, gw0)
    assert LossOptions().describe() == "eager"
    assert LossOptions(True, True).describe() == "compiled chunk, fp32-accumulating GEMM"
