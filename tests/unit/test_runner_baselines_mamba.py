"""Mamba without mamba_ssm: the chunked selective scan against the recurrence in float64, and
the patched transformers mixer against transformers' own reference forward and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from runners.models import baselines, catalog


@pytest.mark.parametrize("chunk_steps", [None, 3, 1])
def test_selective_scan_matches_the_recurrence_and_its_gradients(
        chunk_steps: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    b, d, T, n = 2, 5, 13, 4
    if chunk_steps is not None:  # chunks of 3 and 1 time steps: every boundary path
        monkeypatch.setattr(baselines, "SCAN_CHUNK_BYTES", 4 * b * d * n * chunk_steps)
    g = torch.Generator().manual_seed(chunk_steps or 0)
    inputs = (torch.randn(b, d, T, generator=g),
              torch.rand(b, d, T, generator=g) * 0.5 + 0.01,
              -torch.rand(d, n, generator=g) - 0.1,
              torch.randn(b, T, n, generator=g), torch.randn(b, T, n, generator=g))
    inputs = tuple(t.requires_grad_() for t in inputs)
    gy = torch.randn(b, d, T, generator=g)
    ref = baselines.scan_reference(*inputs)
    ref_grads = torch.autograd.grad((ref * gy.double()).sum(), inputs)
    y = baselines.selective_scan(*inputs)
    grads = torch.autograd.grad((y * gy).sum(), inputs)
    assert y.dtype == torch.float32
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-6
    for got, want in zip(grads, ref_grads, strict=True):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_patched_mixer_equals_transformers_reference() -> None:
    card = catalog.model_card("tiny")
    config = baselines._config("mamba", card, 32, 256)
    torch.manual_seed(0)
    ours = baselines._instantiate("mamba", config).train()
    ref = copy.deepcopy(ours)
    assert baselines.use_selective_scan(ours) == card.num_layers
    assert baselines.use_selective_scan(ours) == 0  # idempotent
    ids = torch.randint(0, card.vocab_size, (2, 24))

    def run(model):  # type: ignore[no-untyped-def]
        out = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weight).sum().backward()
        return out.detach(), {k: p.grad for k, p in model.named_parameters()}

    out, grads = run(ours)
    ref_out, ref_grads = run(ref)
    assert ((out - ref_out).norm() / ref_out.norm()).item() < 1e-5
    for name, want in ref_grads.items():
        assert ((grads[name] - want).norm() / want.norm()).item() < 1e-4, name


def test_cached_generation_still_takes_transformers_path() -> None:
    card = catalog.model_card("tiny")
    model = baselines.build("mamba", card, 32, "cpu", 0, 10**6)
    model.hf.eval()
    with torch.no_grad():
        out = model.hf(input_ids=torch.randint(0, card.vocab_size, (1, 6)), use_cache=True)
    assert out.logits.shape[:2] == (1, 6)
    info = model.describe()
    assert info["scan"].startswith("chunked selective_scan")
    assert info["activation_checkpointing"] is False
    model.set_checkpointing(True)
    assert model.describe()["activation_checkpointing"] is True
    assert all(layer.gradient_checkpointing for layer in model.hf.base_model.layers)
