"""RWKV's WKV recurrence (runners.kernels.rwkv_wkv) on the CPU: importing it loads neither Triton
nor fla, the reference loop is transformers' fallback loop (values and gradients, large keys
included), and the attention patch keeps transformers' forward wherever the kernel cannot run
while its training path wires transformers' projections around the recurrence exactly as
transformers does. fla's kernel itself is checked in tests/gpu/test_rwkv_gpu.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

from runners.kernels import rwkv_wkv

ROOT = Path(__file__).resolve().parents[2]


def _inputs(b: int, T: int, C: int, key_scale: float, seed: int,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    time_decay = torch.rand(C, generator=g) * 8 - 5  # transformers' init spans -5..3
    time_first = torch.randn(C, generator=g) * 0.5 + 0.3
    key = torch.randn(b, T, C, generator=g) * key_scale
    value = torch.randn(b, T, C, generator=g)
    return tuple(t.to(dtype) for t in (time_decay, time_first, key, value))


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def test_import_loads_no_triton() -> None:
    probe = ("import json, sys, runners.kernels.rwkv_wkv; "
             "print(json.dumps(['triton' in sys.modules, 'fla' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=120)
    assert json.loads(out.stdout) == [False, False]


@pytest.mark.parametrize("key_scale", [1.0, 30.0])
def test_reference_is_transformers_loop(key_scale: float) -> None:
    # float32: the same operations in the same order as transformers' loop
    inputs = [t.requires_grad_() for t in _inputs(2, 40, 24, key_scale, seed=int(key_scale))]
    gy = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(7))
    ours = rwkv_wkv.wkv_reference(*inputs)
    theirs, state = rwkv_linear_attention_cpu(*inputs)
    assert state is None and ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    for got, want in zip(torch.autograd.grad(ours, inputs, gy),
                         torch.autograd.grad(theirs, inputs, gy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # float64: the reference stays float64 throughout (transformers' loop takes the key
    # through float32), so they agree to float32 precision, keys of +-100 included
    d_inputs = [t.detach().double() for t in inputs]
    ref64 = rwkv_wkv.wkv_reference(*d_inputs)
    assert ref64.dtype == torch.float64 and torch.isfinite(ref64).all()
    assert _rel(ref64, rwkv_linear_attention_cpu(*d_inputs)[0]) < 1e-5


def test_wkv_off_cuda_is_the_reference() -> None:
    inputs = _inputs(2, 9, 8, 3.0, seed=3, dtype=torch.bfloat16)
    out = rwkv_wkv.wkv(*inputs)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 9, 8)
    assert torch.equal(out, rwkv_wkv.wkv_reference(*inputs))


def _tiny_rwkv() -> Any:
    config = transformers.RwkvConfig(
        vocab_size=64, context_length=32, hidden_size=32, num_hidden_layers=2,
        attention_hidden_size=32, intermediate_size=64, rescale_every=0, use_cache=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    return transformers.RwkvForCausalLM._from_config(config, dtype=torch.float32).train()


def _loss_and_grads(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}


def test_patch_falls_through_to_transformers_on_cpu() -> None:
    ours = _tiny_rwkv()
    ref = copy.deepcopy(ours)
    assert rwkv_wkv.use_wkv_kernel(ours) == 2
    assert rwkv_wkv.use_wkv_kernel(ours) == 0  # already patched: nothing new
    assert all(hasattr(layer.attention, "_hf_forward") for layer in ours.rwkv.blocks)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    loss, grads = _loss_and_grads(ours, ids)
    ref_loss, ref_grads = _loss_and_grads(ref, ids)
    assert torch.equal(loss, ref_loss)
    for name, want in ref_grads.items():
        assert torch.equal(grads[name], want), name
    ours.eval()
    with torch.no_grad():  # cached generation: transformers' state path
        out = ours(input_ids=ids[:1, :5], use_cache=True)
        step = ours(input_ids=ids[:1, 5:6], state=out.state, use_cache=True)
        full = ours(input_ids=ids[:1, :6], use_cache=False)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-5, atol=1e-5)


class _RecordingWKV:
    """Stands in for fla's kernel: the reference, counting its calls."""

    calls = 0

    @classmethod
    def __call__(cls, *args: torch.Tensor) -> torch.Tensor:
        cls.calls += 1
        return rwkv_wkv.wkv_reference(*args)


def test_patched_training_path_matches_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel path (forced on the CPU, the reference standing in for the kernel) gives
    transformers' loss and gradients; calls with a cache still take transformers' path."""
    monkeypatch.setattr(rwkv_wkv, "_runs_kernel", lambda t: True)
    monkeypatch.setattr(rwkv_wkv, "kernel_wkv", _RecordingWKV())
    _RecordingWKV.calls = 0
    ours = _tiny_rwkv()
    ref = copy.deepcopy(ours)
    rwkv_wkv.use_wkv_kernel(ours)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    loss, grads = _loss_and_grads(ours, ids)
    assert _RecordingWKV.calls == 2  # one a layer
    ref_loss, ref_grads = _loss_and_grads(ref, ids)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, want in ref_grads.items():
        assert _rel(grads[name], want) < 1e-5, name
    with torch.no_grad():
        ours(input_ids=ids, use_cache=True)
    assert _RecordingWKV.calls == 2


def test_wkv_operands_that_disagree_are_refused_before_any_import() -> None:
    k = torch.randn(2, 5, 8)
    good = (torch.zeros(8), torch.zeros(8), k, torch.randn(2, 5, 8))
    for i, bad in ((0, torch.zeros(7)), (1, torch.zeros(8, 1)), (3, torch.randn(2, 4, 8))):
        operands = list(good)
        operands[i] = bad
        with pytest.raises(ValueError, match="WKV operands disagree"):
            rwkv_wkv.kernel_wkv(*operands)
