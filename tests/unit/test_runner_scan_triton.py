"""The Triton selective scan's CPU-side contract: nothing imports triton until a kernel runs,
CPU tensors stay on the chunked torch scan, the operands' layouts the kernels are handed,
and the description strings that say which path ran. The kernels themselves are checked on
a GPU (tests/gpu/test_pretraining_gpu.py) against the chunked scan and float64."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runners.errors import BadInput
from runners.kernels import rwkv_wkv, scan_triton
from runners.models import baselines, catalog

ROOT = Path(__file__).resolve().parents[2]


def _inputs(b: int = 2, d: int = 5, T: int = 9, n: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, d, T, generator=g), torch.rand(b, d, T, generator=g) * 0.5 + 0.01,
            -torch.rand(d, n, generator=g) - 0.1, torch.randn(b, T, n, generator=g),
            torch.randn(b, T, n, generator=g))


def test_importing_and_the_cpu_path_load_no_triton() -> None:
    """The kernel modules import no Triton, and a CPU build and step never defines the
    kernels (torch's own compiler may import an installed Triton; that is not ours)."""
    probe = ("import json, sys, torch\n"
             "from runners.kernels import rwkv_wkv, scan_triton\n"
             "ours = sorted(m for m in sys.modules if m.split('.')[0] == 'triton')\n"
             "from runners.models import baselines, catalog\n"
             "card = catalog.model_card('tiny')\n"
             "ids = torch.randint(0, card.vocab_size, (1, 16))\n"
             "for kind in ('mamba', 'rwkv'):\n"
             "    m = baselines.build(kind, card, 16, 'cpu', 0, 10**6)\n"
             "    m.forward_loss(ids, ids).loss.backward()\n"
             "m = baselines.build('mamba', card, 16, 'cpu', 0, 10**6)\n"
             "print(json.dumps([scan_triton.available(), m.describe()['kernels'], ours,"
             " scan_triton._kernels.cache_info().currsize == 0 and\n"
             " 'fla' not in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=120)
    available, kernels, loaded, undefined = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [] and undefined is True
    assert kernels == baselines.SCAN_PATH
    assert available is (torch.cuda.is_available() and
                         importlib.util.find_spec("triton") is not None)


@pytest.mark.parametrize("kind", ["mamba", "rwkv"])
def test_recurrence_triton_is_bad_input_where_it_cannot_run(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    card = catalog.model_card("tiny")
    with pytest.raises(BadInput, match="recurrence=triton needs a CUDA device"):
        baselines.build(kind, card, 16, "cpu", 0, 10**6, "triton")
    monkeypatch.setattr(scan_triton, "available", lambda: False)
    with pytest.raises(BadInput, match="needs a CUDA device and the triton package"):
        baselines.check_recurrence("triton", "cuda:0")
    with pytest.raises(BadInput, match="unknown recurrence 'fast'"):
        baselines.check_recurrence("fast", "cpu")
    monkeypatch.setattr(scan_triton, "available", lambda: True)
    baselines.check_recurrence("triton", "cuda:1")  # no error
    # RWKV's triton recurrence is fla's kernel: without fla-core it is refused too
    monkeypatch.setattr(rwkv_wkv, "fla_installed", lambda: False)
    with pytest.raises(BadInput, match="pip install fla-core==0.6.0"):
        baselines.check_recurrence("triton", "cuda:1", "rwkv")
    baselines.check_recurrence("triton", "cuda:1", "mamba")  # Mamba's scan is ours
    baselines.check_recurrence("torch", "cpu")
    # Pythia has no recurrence: the parameter does not concern it
    assert "scan" not in baselines.build("pythia", card, 16, "cpu", 0, 10**6).describe()


def test_the_mixers_run_the_scan_of_their_recurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    """`recurrence=triton` routes every mixer through `selective_scan_triton` (stood in for
    here by the torch scan, counting calls), `torch` through `selective_scan`; the strings in
    the result name the path that ran."""
    calls = []

    def fake_triton(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].shape)
        return baselines._SelectiveScan.apply(*args)

    monkeypatch.setattr(baselines, "mamba_fused_available", lambda: False)
    monkeypatch.setattr(scan_triton, "selective_scan_triton", fake_triton)
    card = catalog.model_card("tiny")
    torch_model = baselines.build("mamba", card, 16, "cpu", 0, 10**6)
    inputs = torch.randint(0, card.vocab_size, (2, 16))
    want = torch_model.forward_loss(inputs, inputs).loss
    assert calls == []
    monkeypatch.setattr(baselines, "check_recurrence", lambda recurrence, device, kind: None)
    model = baselines.build("mamba", card, 16, "cpu", 0, 10**6, "triton")
    got = model.forward_loss(inputs, inputs).loss
    assert len(calls) == card.num_layers and torch.equal(got, want)
    info = model.describe()
    assert info["kernels"] == baselines.SCAN_PATH_TRITON and info["recurrence"] == "triton"
    assert info["scan"] == (f"triton selective scan (runners.kernels.scan_triton), "
                            f"{card.num_layers} mixers")
    assert torch_model.describe()["kernels"] == baselines.SCAN_PATH
    assert torch_model.describe()["scan"].startswith("chunked selective_scan")
    for text in (baselines.SCAN_PATH, baselines.SCAN_PATH_TRITON):
        assert "mamba_ssm" in text
    assert "triton" not in baselines.SCAN_PATH.lower()


def test_prepare_hands_the_kernels_time_contiguous_operands() -> None:
    b, d, T, n = 2, 6, 11, 4
    u, delta, A, Bm, Cm = _inputs(b, d, T, n)
    channel_major = delta.transpose(1, 2).contiguous().transpose(1, 2)  # as the mixer's
    params = torch.randn(b, T, 3 + 2 * n)  # B and C as slices of x_proj's output
    Bs, Cs = params[..., 3:3 + n], params[..., 3 + n:]
    pu, pdelta, pA, pB, pC = scan_triton._prepare(u, channel_major, A, Bs, Cs)
    assert pu is u  # already time-contiguous: no copy
    assert pdelta.stride(2) == 1 and torch.equal(pdelta, delta)
    assert pA.stride(0) == 1 and torch.equal(pA, A)
    for got, want in ((pB, Bs), (pC, Cs)):
        assert got.shape == want.shape and got.stride(1) == 1 and torch.equal(got, want)
    again = scan_triton._prepare(pu, pdelta, pA, pB, pC)  # idempotent, views all along
    assert all(x is y for x, y in zip(again, (pu, pdelta, pA, pB, pC), strict=True))


def test_config_and_argument_checks() -> None:
    assert scan_triton._config(None, None) == (scan_triton.BLOCK_D, scan_triton.BLOCK_D // 32)
    assert scan_triton._config(None, 2) == (64, 2)
    assert scan_triton._config(16, None) == (16, 1)
    assert scan_triton._config(256, None) == (256, 8)
    assert [scan_triton._block_n(n) for n in (1, 3, 4, 16, 17, 64)] == [2, 4, 4, 16, 32, 64]
    with pytest.raises(ValueError, match="power of two"):
        scan_triton.selective_scan_triton(*_inputs(), block_d=48)
    with pytest.raises(ValueError, match="chunk"):
        scan_triton.selective_scan_triton(*_inputs(), chunk=0)


def test_operands_that_disagree_are_refused_before_any_launch() -> None:
    """The kernels index their operands unchecked: mismatched shapes must never reach them."""
    u, delta, A, Bm, Cm = _inputs(2, 5, 9, 4)
    bad = {"delta": (u, delta[:, :, :8], A, Bm, Cm), "A": (u, delta, A[:4], Bm, Cm),
           "B": (u, delta, A, Bm[:, :, :3], Cm), "C": (u, delta, A, Bm, Cm[:1]),
           "u": (u[0], delta, A, Bm, Cm)}
    for name, operands in bad.items():
        with pytest.raises(ValueError, match="must be|disagree"):
            scan_triton.selective_scan_triton(*operands)
        assert scan_triton._kernels.cache_info().currsize == 0, name


def test_recurrence_auto_takes_the_kernel_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CPU: the torch paths (and a build records what it resolved to)
    assert baselines.resolve_recurrence("auto", "cpu", "mamba") == "torch"
    assert baselines.resolve_recurrence("auto", "cpu", "rwkv") == "torch"
    card = catalog.model_card("tiny")
    assert baselines.build("mamba", card, 16, "cpu", 0, 10**6).describe()["recurrence"] == "torch"
    # CUDA with Triton: Mamba's scan; RWKV's only with fla-core
    monkeypatch.setattr(scan_triton, "available", lambda: True)
    monkeypatch.setattr(rwkv_wkv, "fla_installed", lambda: True)
    assert baselines.resolve_recurrence("auto", "cuda:0", "mamba") == "triton"
    assert baselines.resolve_recurrence("auto", "cuda:0", "rwkv") == "triton"
    monkeypatch.setattr(rwkv_wkv, "fla_installed", lambda: False)
    assert baselines.resolve_recurrence("auto", "cuda:0", "rwkv") == "torch"
    assert baselines.resolve_recurrence("auto", "cuda:0", "mamba") == "triton"
    baselines.check_recurrence("auto", "cuda:0", "rwkv")  # auto is never refused
    monkeypatch.setattr(scan_triton, "available", lambda: False)
    assert baselines.resolve_recurrence("auto", "cuda:0", "mamba") == "torch"
    # an explicit choice is kept as asked
    assert baselines.resolve_recurrence("torch", "cuda:0", "mamba") == "torch"
