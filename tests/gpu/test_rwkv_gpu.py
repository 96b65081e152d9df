"""RWKV's WKV recurrence on flash-linear-attention's fused RWKV-4 kernel, as
runners.kernels.rwkv_wkv runs it on a CUDA device: forward
and the four gradients against the float64 reference loop (float32 and bfloat16 inputs, keys
of +-100 included, a channel count that is not a multiple of the block), deterministic
gradients, and a tiny transformers RwkvForCausalLM patched with `use_wkv_kernel` against the
unpatched model (which on CUDA without the hub kernel runs transformers' loop)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import transformers

from runners.kernels import rwkv_wkv

pytestmark = pytest.mark.skipif(not rwkv_wkv.available(),
                                reason="no CUDA device or fla-core is not installed")

DEVICE = "cuda"


def _inputs(b: int, T: int, C: int, key_scale: float, seed: int, dtype: torch.dtype
            ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    time_decay = torch.rand(C, generator=g) * 8 - 5  # transformers' init spans -5..3
    time_first = torch.randn(C, generator=g) * 0.5 + 0.3
    key = torch.randn(b, T, C, generator=g) * key_scale
    value = torch.randn(b, T, C, generator=g)
    gy = torch.randn(b, T, C, generator=g)
    return (time_decay.to(DEVICE), time_first.to(DEVICE), key.to(DEVICE, dtype),
            value.to(DEVICE, dtype), gy.to(DEVICE, dtype))


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("key_scale", [1.0, 30.0])
def test_kernel_matches_float64_reference(dtype: torch.dtype, key_scale: float) -> None:
    *inputs, gy = _inputs(2, 300, 200, key_scale, seed=int(key_scale), dtype=dtype)
    ours_in = [t.clone().requires_grad_() for t in inputs]
    y = rwkv_wkv.wkv(*ours_in)
    assert y.grad_fn is not None and y.dtype == dtype
    grads = torch.autograd.grad(y, ours_in, gy)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref = rwkv_wkv.wkv_reference(*ref_in)
    ref_grads = torch.autograd.grad(ref, ref_in, gy.double())
    assert y.dtype == dtype and grads[2].dtype == grads[3].dtype == dtype
    assert grads[0].dtype == grads[1].dtype == torch.float32
    # float32 rounding of exponents of size |k| (up to ~100) bounds the large-key case;
    # bfloat16 outputs and key/value gradients carry bfloat16's rounding (2^-8)
    fine = 1e-5 if key_scale == 1.0 else 2e-4
    coarse = fine if dtype == torch.float32 else 1e-2
    errors = {name: _rel(got, want) for name, got, want in zip(
        ("y", "time_decay", "time_first", "key", "value"), (y, *grads), (ref, *ref_grads),
        strict=True)}
    limits = {"y": coarse, "time_decay": fine, "time_first": fine, "key": coarse,
              "value": coarse}
    assert all(errors[n] < limits[n] for n in errors), errors


def test_gradients_are_deterministic() -> None:
    *inputs, gy = _inputs(3, 64, 96, 2.0, seed=5, dtype=torch.float32)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in inputs]
        runs.append(torch.autograd.grad(rwkv_wkv.wkv(*leaves), leaves, gy))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _tiny_rwkv() -> Any:
    config = transformers.RwkvConfig(
        vocab_size=128, context_length=64, hidden_size=96, num_hidden_layers=2,
        attention_hidden_size=96, intermediate_size=192, rescale_every=0, use_cache=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return transformers.RwkvForCausalLM._from_config(config, dtype=torch.float32).train()


def _loss_and_grads(model: Any, ids: torch.Tensor, autocast: bool
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach().float(), {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_patched_model_matches_transformers(autocast: bool) -> None:
    ours = _tiny_rwkv()
    ref = copy.deepcopy(ours)
    assert rwkv_wkv.use_wkv_kernel(ours) == 2
    assert rwkv_wkv.use_wkv_kernel(ours) == 0
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    loss, grads = _loss_and_grads(ours, ids, autocast)
    ref_loss, ref_grads = _loss_and_grads(ref, ids, autocast)
    # transformers' loop under autocast rounds its state updates' inputs differently (bf16
    # key and value in, bf16 out): the two agree to bf16 rounding, not to float32's
    loss_tol, grad_tol = (1e-5, 1e-4) if not autocast else (1e-2, 5e-2)
    assert abs(loss.item() - ref_loss.item()) <= loss_tol * abs(ref_loss.item())
    for name, want in ref_grads.items():
        assert _rel(grads[name], want) < grad_tol, name
    ours.eval()
    with torch.no_grad():  # cached generation: transformers' state path, unchanged
        out = ours(input_ids=ids[:1, :8], use_cache=True)
        step = ours(input_ids=ids[:1, 8:9], state=out.state, use_cache=True)
        full = ref.eval()(input_ids=ids[:1, :9], use_cache=False)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)
