"""NSA (runners.kernels.nsa, runners.models.decoder_nsa): the torch reference against a
per-query loop written from the definition and, where fla-core is installed, against fla's
Triton kernel in the interpreter; the window branch of the CUDA path against the reference;
the head layout and FLOPs of the decoder variant; the parameter checks."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from runners import params
from runners.errors import BadInput
from runners.kernels import nsa as nsa_mod
from runners.kernels.nsa import NSAShape, nsa_reference, window_attention
from runners.models import catalog
from runners.models.decoder import Decoder
from runners.models.decoder_config import DecoderConfig

ROOT = Path(__file__).resolve().parents[2]
QWEN05: dict[str, Any] = dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
              ffn_hidden=4864, max_seq_len=2048)


def loop_nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor,
             shape: NSAShape) -> torch.Tensor:
    """NSA from its definition, one query and one head at a time, in float64."""
    q, k, v, gates = (x.double() for x in (q, k, v, gates))
    b_n, t_n, hq, d = q.shape
    h_n = k.shape[2]
    g_n, bs = hq // h_n, shape.block_size
    scale = d ** -0.5
    out = torch.zeros_like(q)

    def attend(qv: torch.Tensor, keys: list[int], kk: torch.Tensor,
               vv: torch.Tensor) -> torch.Tensor:
        if not keys:
            return torch.zeros_like(qv)
        w = torch.softmax(torch.stack([qv @ kk[j] * scale for j in keys]), dim=0)
        return sum(w[i] * vv[j] for i, j in enumerate(keys))  # type: ignore[return-value]

    for b in range(b_n):
        for h in range(h_n):
            kb, vb = k[b, :, h], v[b, :, h]
            n_blocks = math.ceil(t_n / bs)
            k_cmp = torch.stack([kb[c * bs:(c + 1) * bs].mean(0) for c in range(n_blocks)])
            v_cmp = torch.stack([vb[c * bs:(c + 1) * bs].mean(0) for c in range(n_blocks)])
            for t in range(t_n):
                seen = [c for c in range(n_blocks) if (c + 1) * bs - 1 <= t]
                own = t // bs
                score = {}
                for c in range(own + 1):
                    score[c] = 0.0
                    for g in range(g_n):
                        qv = q[b, t, h * g_n + g]
                        if c in (0, own, own - 1):
                            score[c] += 1.0
                            continue
                        s = torch.stack([qv @ k_cmp[x] * scale for x in seen])
                        score[c] += float(torch.softmax(s, 0)[seen.index(c)])
                ranked = sorted(score, key=lambda c: -score[c])[:shape.block_count]
                for g in range(g_n):
                    i = h * g_n + g
                    qv = q[b, t, i]
                    o_cmp = attend(qv, seen, k_cmp, v_cmp)
                    keys = [j for j in range(t + 1) if j // bs in ranked]
                    o_slc = attend(qv, keys, kb, vb)
                    window = list(range(max(0, t - shape.window + 1), t + 1)) \
                        if shape.window else []
                    o_swa = attend(qv, window, kb, vb)
                    gate = gates[b, t, i]
                    out[b, t, i] = gate[0] * o_cmp + gate[1] * o_slc + gate[2] * o_swa
    return out


def inputs(b: int, t: int, h: int, g: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h * g, d, generator=gen), torch.randn(b, t, h, d, generator=gen),
            torch.randn(b, t, h, d, generator=gen), torch.rand(b, t, h * g, 3, generator=gen)]


@pytest.mark.parametrize(("b", "t", "h", "g", "shape"), [
    (2, 64, 1, 4, NSAShape(8, 4, 12)),   # 8 blocks, 4 chosen, a window across blocks
    (1, 45, 2, 2, NSAShape(8, 4, 0)),    # a partial last block (padded), no window branch
])
def test_reference_matches_the_definition(b: int, t: int, h: int, g: int,
                                          shape: NSAShape) -> None:
    q, k, v, gates = inputs(b, t, h, g, 8)
    got = nsa_reference(q, k, v, gates, shape)
    want = loop_nsa(q, k, v, gates, shape)
    assert got.shape == (b, t, h * g, 8) and got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 2e-5


def test_selection_is_sparse_and_forces_first_previous_and_own_blocks() -> None:
    q, k, _, _ = inputs(1, 128, 1, 16, 16, seed=3)
    shape = NSAShape(16, 4, 0)
    qh = q.permute(0, 2, 1, 3).reshape(1, 1, 16, 128, 16)
    k_cmp = k.permute(0, 2, 1, 3).reshape(1, 1, 8, 16, 16).mean(dim=3)
    s = torch.einsum("bhgtd,bhcd->bhgtc", qh, k_cmp) * 16 ** -0.5
    t = torch.arange(128)[:, None]
    s = s.masked_fill(~((torch.arange(8)[None, :] + 1) * 16 - 1 <= t), float("-inf"))
    chosen = nsa_mod.select_blocks(qh, k_cmp, torch.logsumexp(s, dim=-1), shape)[0, 0]
    counts = chosen.sum(dim=-1)
    # blocks reached: own + 1 (at most 4 chosen); the forced ones always among them
    assert counts.tolist() == [min(4, i // 16 + 1) for i in range(128)]
    for i in range(128):
        own = i // 16
        assert chosen[i, 0] and chosen[i, own] and (own == 0 or chosen[i, own - 1])
        assert not chosen[i, own + 1:].any()


def test_cuda_window_branch_matches_the_reference_window() -> None:
    q, k, v, _ = inputs(2, 40, 2, 16, 8, seed=5)
    only_window = torch.zeros(2, 40, 32, 3)
    only_window[..., 2] = 1.0
    want = nsa_reference(q, k, v, only_window, NSAShape(8, 4, 10))
    got = window_attention(q, k, v, 10)
    assert (got - want).abs().max().item() < 1e-5


def test_gradients_reach_every_input() -> None:
    xs = [x.requires_grad_() for x in inputs(1, 32, 1, 16, 8, seed=7)]
    nsa_reference(*xs, NSAShape(8, 4, 8)).square().sum().backward()
    for x in xs:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 1


def test_decoder_layout_at_the_qwen05_shape() -> None:
    base, sparse = DecoderConfig(**QWEN05), DecoderConfig(**QWEN05, attention="nsa")
    assert (sparse.q_heads, sparse.kv_heads, sparse.head_dim) == (16, 1, 64)
    # the fused q/k/v projection is as wide as the baseline's: 16 + 2 heads = 14 + 2 x 2
    assert (sparse.q_heads + 2 * sparse.kv_heads) == (base.q_heads + 2 * base.kv_heads)
    with torch.device("meta"):
        model = Decoder(sparse)
    assert model.attention_shape() == (24, 1024)
    # 1.5 x 2048 / 64 compressed + 8 x 64 chosen + a 256 window
    assert model.attention_context(2048) == 48 + 512 + 256
    assert model.attention_context(64) == 2 + 64 + 64
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (1152, 896) and attn.gate.weight.shape == (48, 896)
    assert attn.out.weight.shape == (896, 1024)


def test_decoder_trains_on_cpu_through_the_reference() -> None:
    cfg = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                        ffn_hidden=64, max_seq_len=64, attention="nsa", nsa_block_size=16,
                        nsa_block_count=4, nsa_window=16)
    torch.manual_seed(0)
    model = Decoder(cfg)
    ids = torch.randint(0, 64, (2, 65))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model.forward_loss(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(64), abs=0.05)  # uniform at init
    assert losses[-1] < losses[0] - 0.5


def test_describe_says_which_implementation_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert nsa_mod.describe(False) == ("torch reference (runners.kernels.nsa.nsa_reference: "
                                       "dense masked SDPA, not CUDA)")
    monkeypatch.setattr(nsa_mod, "fla_installed", lambda: False)
    assert nsa_mod.describe(True).endswith("fla-core==0.6.0 not installed)")
    monkeypatch.setattr(nsa_mod, "fla_installed", lambda: True)
    monkeypatch.setattr(nsa_mod, "flash_attn_installed", lambda: False)
    assert nsa_mod.describe(True) == (
        "flash-linear-attention parallel_nsa (fla-core, Triton): compressed + selected "
        "branches; sliding window on SDPA band mask (flash-attn not installed)")


def test_catalog_and_paper_name() -> None:
    from efficientllm_tui.paper import METHOD_NAMES

    tech = catalog.technique("nsa")
    assert (tech.family, tech.group) == ("pretraining", "attention")
    assert METHOD_NAMES["nsa"] == "NSA"


@pytest.mark.parametrize(("values", "seq_len", "message"), [
    ({"nsa_block": 48}, 96, "nsa_block must be a power of two of at least 16, got 48"),
    ({}, 96, "nsa needs seq_len a multiple of nsa_block 64, got seq_len 96"),
    ({"nsa_blocks": 64}, 128, "nsa_blocks must be a power of two within [4, nsa_block / 2 = "
                              "32], got 64"),
    ({"nsa_block": 16, "nsa_blocks": 16}, 128, "nsa_blocks must be a power of two within "
                                               "[4, nsa_block / 2 = 8], got 16"),
    ({"nsa_blocks": 6}, 128, "nsa_blocks must be a power of two within [4, nsa_block / 2 = "
                             "32], got 6"),
])
def test_bad_sizes_are_refused(values: dict[str, int], seq_len: int, message: str) -> None:
    card = catalog.model_card("tiny")
    assert params.pair_problem("pretraining", "nsa", card, seq_len=seq_len, new_tokens=0,
                               values=values) == message
    # the same sizes are fine for another technique, and the defaults fit seq 2048
    assert params.pair_problem("pretraining", "gqa", card, seq_len=seq_len, new_tokens=0,
                               values=values) is None
    assert params.pair_problem("pretraining", "nsa", card, seq_len=2048, new_tokens=0) is None


@pytest.mark.parametrize(("block", "count", "window"), [(48, 4, 0), (64, 64, 0), (16, 16, 0),
                                                        (64, 6, 0), (64, 8, -1)])
def test_decoder_config_refuses_the_same_sizes(block: int, count: int, window: int) -> None:
    with pytest.raises(ValueError, match=r"^nsa_"):
        DecoderConfig(**QWEN05, attention="nsa", nsa_block_size=block, nsa_block_count=count,
                      nsa_window=window)


@pytest.mark.parametrize(("raw", "message"), [
    ({"nsa_window": -1}, "nsa_window must be at least 0, got -1"),
    ({"nsa_block": 512}, "nsa_block must be within [16, 256], got 512"),
    ({"nsa_blocks": 2}, "nsa_blocks must be at least 4, got 2"),
])
def test_out_of_range_params_are_refused(raw: dict[str, int], message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        params.resolve("pretraining", raw)
    assert params.resolve("pretraining", {})["nsa_block"] == 64


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fla") is None
                    or importlib.util.find_spec("triton") is None,
                    reason="fla-core (the `kernels` extra) and triton are not installed")
def test_reference_matches_flas_kernel_in_the_triton_interpreter() -> None:
    """fla's parallel_nsa (Triton, interpreted on CPU): output and every gradient."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                       os.environ.get("PYTHONPATH"))))}
    out = subprocess.run([sys.executable, str(ROOT / "tests/unit/interpreted_nsa.py")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(errors) == {"y", "q", "k", "v", "gates"}
    assert all(e < 1e-5 for e in errors.values()), errors  # float32 rounding only
