"""runners.engines.training: the chunked loss against plain cross-entropy, the schedule, the
step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from runners.engines import training, xent
from runners.models import build as model_mod
from runners.models import catalog


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_chunked_cross_entropy_matches_plain_loss_and_grads(bias: bool, chunk_rows: int) -> None:
    g = torch.Generator().manual_seed(chunk_rows + bias)
    h = torch.randn(5, 9, 16, generator=g, requires_grad=True)
    head = nn.Linear(16, 50, bias=bias)
    y = torch.randint(0, 50, (5, 9), generator=g)
    y[0, :3] = xent.IGNORE_INDEX
    total, n = xent.chunked_cross_entropy(h, head, y, chunk_rows=chunk_rows)
    total.backward()
    got = [h.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    h.grad = None
    head.zero_grad()
    ref = nn.functional.cross_entropy(head(h).reshape(-1, 50), y.reshape(-1), reduction="sum")
    ref.backward()
    want = [h.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    assert n == 5 * 9 - 3
    assert abs(total.item() - ref.item()) <= 1e-4 * abs(ref.item())
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < 1e-5


def test_frozen_head_gets_no_gradient_and_bare_weight_works() -> None:
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(11, 8)  # a bare frozen weight
    y = torch.randint(0, 11, (4,))
    total, n = xent.chunked_cross_entropy(h, w, y, chunk_rows=3)
    total.backward()
    ref_h = h.detach().clone().requires_grad_(True)
    nn.functional.cross_entropy(ref_h @ w.T, y, reduction="sum").backward()
    assert n == 4 and _rel(h.grad, ref_h.grad) < 1e-5 and w.grad is None


def test_a_non_linear_head_falls_back_to_checkpointed_chunks() -> None:
    head = nn.Sequential(nn.Linear(8, 13))
    h = torch.randn(6, 8, requires_grad=True)
    y = torch.randint(0, 13, (6,))
    total, _ = xent.chunked_cross_entropy(h, head, y, chunk_rows=4)
    total.backward()
    ref_h = h.detach().clone().requires_grad_(True)
    grad_w = head[0].weight.grad.clone()
    head.zero_grad()
    ref = nn.functional.cross_entropy(head(ref_h), y, reduction="sum")
    ref.backward()
    assert abs(total.item() - ref.item()) < 1e-4
    assert _rel(h.grad, ref_h.grad) < 1e-5 and _rel(grad_w, head[0].weight.grad) < 1e-5


def test_all_ignored_targets_give_zero_loss_with_a_graph() -> None:
    h = torch.randn(2, 3, 8, requires_grad=True)
    y = torch.full((2, 3), xent.IGNORE_INDEX)
    total, n = xent.chunked_cross_entropy(h, nn.Linear(8, 5), y)
    total.backward()
    assert n == 0 and total.item() == 0.0 and h.grad is not None


def test_chunked_loss_under_bf16_autocast_is_close_to_fp32() -> None:
    h = torch.randn(32, 64)
    head = nn.Linear(64, 300, bias=False)
    y = torch.randint(0, 300, (32,))
    ref, _ = xent.chunked_cross_entropy(h, head, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = xent.chunked_cross_entropy(h, head, y, chunk_rows=5)
    assert low.dtype == torch.float32
    assert abs(float(low) - float(ref)) / float(ref) < 2e-2


def test_causal_lm_loss_shifts_labels_and_normalises() -> None:
    head = nn.Linear(8, 20, bias=False)
    h = torch.randn(2, 6, 8)
    labels = torch.randint(0, 20, (2, 6))
    logits = head(h)
    ref = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 20), labels[:, 1:].reshape(-1))
    got = xent.causal_lm_loss(h, head, labels)
    assert abs(float(got) - float(ref)) < 1e-5
    halved = xent.causal_lm_loss(h, head, labels, num_items=20)
    assert abs(float(halved) - float(ref) * 10 / 20) < 1e-5


def _tiny() -> nn.Module:
    return model_mod.build(catalog.model_card("tiny"), torch.float32, "cpu", seed=0).model


def test_chunked_lm_loss_matches_the_models_own_loss_and_restores_it() -> None:
    model = _tiny()
    head = model.lm_head
    x = torch.randint(0, 256, (2, 24))
    labels = x.clone()
    labels[:, :5] = xent.IGNORE_INDEX
    ref = model(input_ids=x, labels=labels).loss
    with xent.chunked_lm_loss(model, chunk_rows=7) as tap:
        assert model.lm_head is not head
        out = model(input_ids=x, labels=labels)
        assert out.logits.shape == (2, 24, 256)  # hidden states, never vocabulary logits
        assert tap.last is not None and abs(float(tap.last) - float(out.loss)) < 1e-6
    assert model.lm_head is head and "_loss_function" not in vars(model)
    assert abs(float(out.loss) - float(ref)) < 1e-5


@pytest.mark.parametrize(("step", "want"), [(0, 0.5), (1, 1.0), (3, 0.5), (5, 0.0)])
def test_cosine_schedule_by_hand(step: int, want: float) -> None:
    # 1 warm-up step at 1/2; then a half cosine over 4 steps, reaching 0 after the last.
    got = training.cosine_lr_factor(step, total_steps=5, warmup_steps=1)
    assert got == pytest.approx(want, abs=1e-12)
    last = training.cosine_lr_factor(4, total_steps=5, warmup_steps=1)
    assert last == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4))) and last > 0
    assert training.cosine_lr_factor(9, total_steps=5, warmup_steps=1, min_ratio=0.1) == \
        pytest.approx(0.1)


def test_precision_resolution() -> None:
    assert training.resolve_precision("auto", "cpu") == "fp32"
    assert training.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        training.resolve_precision("fp8", "cpu")


def test_count_tokens_excludes_padding_and_unscored_labels() -> None:
    batch = {"input_ids": torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, 2, 3, -100], [-100, 5, -100, -100]])}
    assert training.count_tokens(batch) == (5, 3, 2)


def test_grad_accumulation_matches_one_big_batch() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 16))
    labels = x.clone()
    labels[0, :9] = xent.IGNORE_INDEX  # uneven target counts across micro-batches
    grads = []
    for split in (1, 2):
        model = _tiny()
        model.requires_grad_(True)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        step = training.TrainStep(model, opt, device="cpu", max_grad_norm=0)
        with xent.chunked_lm_loss(model) as tap:
            step.tap = tap
            rows = 4 // split
            micro = [{"input_ids": x[i:i + rows], "labels": labels[i:i + rows]}
                     for i in range(0, 4, rows)]
            # capture gradients before the optimizer clears them
            captured: dict[str, torch.Tensor] = {}
            step.after_backward = lambda _s, m=model, c=captured: c.update(
                w=m.model.layers[0].mlp.up_proj.weight.grad.clone())
            stats = step(micro)
        grads.append((captured["w"], stats))
    (g1, s1), (g2, s2) = grads
    assert _rel(g2, g1) < 1e-4
    assert s1.loss == pytest.approx(s2.loss, rel=1e-5)
    assert (s1.tokens, s1.samples, s1.target_tokens) == (64, 4, 4 * 15 - 8)
    assert s1.latency_s > 0 and s1.grad_norm is None


def test_matmul_peak_is_none_off_cuda() -> None:
    assert training.matmul_peak_tflops("cpu") is None


def test_master_weights_keep_updates_a_bf16_weight_would_lose() -> None:
    w = nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    master = training.MasterWeights([w])
    opt = torch.optim.SGD(master.params, lr=1e-3)
    for _ in range(8):  # each update (1e-3) is below half a bf16 ulp at 1.0 (3.9e-3)
        w.grad = torch.ones_like(w)
        master.pull_grads()
        assert w.grad is None and master.params[0].grad.dtype == torch.float32
        opt.step()
        master.push()
    assert float(master.params[0][0]) == pytest.approx(1.0 - 8e-3)
    assert float(w[0]) == pytest.approx(0.9921875)  # the bf16 rounding of 0.992

    plain = nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    sgd = torch.optim.SGD([plain], lr=1e-3)
    for _ in range(8):
        plain.grad = torch.ones_like(plain)
        sgd.step()
    assert float(plain[0]) == 1.0  # every update rounded away


def test_train_step_with_master_weights_trains_a_bf16_model() -> None:
    model = _tiny().to(torch.bfloat16)
    model.requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    master = training.MasterWeights(trained)
    opt = torch.optim.AdamW(master.params, lr=1e-3)
    step = training.TrainStep(model, opt, device="cpu", master=master,
                              params=master.params)
    x = torch.randint(0, 256, (2, 16))
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    with xent.chunked_lm_loss(model):
        first = step([{"input_ids": x, "labels": x}])
        for _ in range(3):
            last = step([{"input_ids": x, "labels": x}])
    assert last.loss < first.loss and first.grad_norm is not None
    after = model.model.layers[0].mlp.up_proj.weight
    assert after.dtype == torch.bfloat16 and not torch.equal(after, before)
    assert all(p.grad is None for p in trained)
