"""The `loss_kernel` parameter (liger-kernel's fused linear cross-entropy or the chunked torch
loss) on the CPU: its values are checked, `auto` resolves to the torch path off CUDA and to
liger on CUDA only where the package is installed, an explicit `liger` that cannot run is bad
input before anything loads, the torch path computes what it computed before, and the liger
path hands liger the rows, the sum reduction and the chunk budget (liger itself, a CUDA
kernel, stood in for by a torch function here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from runners import params
from runners.engines import xent
from runners.engines.xent import LossOptions, chunked_cross_entropy
from runners.errors import BadInput
from runners.families.base import RunContext
from runners.families.finetuning import FinetuningFamily
from runners.families.finetuning_config import FinetuningConfig
from runners.families.pretraining import PretrainingFamily
from runners.families.pretraining_config import PretrainingConfig
from runners.models import catalog
from runners.protocol import RunSpec
from runners.system.eventlog import EventLog

SHORT = dict(batch_size=2, seq_len=16, warmup=1, steps=2)


@pytest.mark.parametrize("family", ["pretraining", "finetuning"])
def test_parameter_values_are_checked(family: str) -> None:
    assert params.of(family)["loss_kernel"].default == "auto"
    assert params.of(family)["loss_kernel"].choices == xent.LOSS_KERNELS
    assert params.resolve(family, {"loss_kernel": "liger"})["loss_kernel"] == "liger"
    with pytest.raises(BadInput) as e:
        params.resolve(family, {"loss_kernel": "cuda"})
    assert str(e.value) == "unknown loss_kernel 'cuda' (choose from auto, liger, torch)"


def test_auto_is_torch_off_cuda_and_liger_only_where_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xent, "liger_installed", lambda: True)
    assert xent.resolve_loss_kernel("auto", "cpu") == "torch"
    assert xent.resolve_loss_kernel("auto", "cuda:0") == "liger"
    assert xent.resolve_loss_kernel("liger", "cuda:1") == "liger"
    assert xent.resolve_loss_kernel("torch", "cuda:0") == "torch"
    with pytest.raises(ValueError, match=r"^loss_kernel=liger needs a CUDA device \(device "
                                         r"cpu\); use loss_kernel=torch or auto$"):
        xent.resolve_loss_kernel("liger", "cpu")
    monkeypatch.setattr(xent, "liger_installed", lambda: False)
    assert xent.resolve_loss_kernel("auto", "cuda:0") == "torch"
    with pytest.raises(ValueError, match=r"pip install liger-kernel==0\.8\.5"):
        xent.resolve_loss_kernel("liger", "cuda:0")
    with pytest.raises(ValueError, match="unknown loss_kernel 'fast'"):
        xent.resolve_loss_kernel("fast", "cpu")


def _context(tmp_path: Path, spec: RunSpec) -> RunContext:
    return RunContext(spec, tmp_path, tmp_path, "cpu", EventLog(tmp_path / "events.jsonl"))


def test_liger_that_cannot_run_is_bad_input_at_validation(tmp_path: Path) -> None:
    spec = RunSpec(run_id="k1", family="pretraining", technique="gqa", model="tiny",
                   device="cpu", params={"loss_kernel": "liger"}, **SHORT)  # type: ignore[arg-type]
    family = PretrainingFamily(PretrainingConfig.from_spec(spec, "cpu"),  # type: ignore[arg-type]
                               catalog.resolve("pretraining", "gqa", "tiny")[1],
                               _context(tmp_path, spec))
    with pytest.raises(BadInput, match="^loss_kernel=liger needs a CUDA device"):
        family.validate()
    for extra, message in (({}, "^loss_kernel=liger needs a CUDA device"),
                           ({"loss_chunk_rows": 0}, "^loss_kernel=liger replaces the chunked "
                                                    "loss; loss_chunk_rows=0")):
        spec = RunSpec(run_id="k2", family="finetuning", technique="lora", model="tiny",
                       device="cpu", params={"loss_kernel": "liger", **extra},
                       **SHORT)  # type: ignore[arg-type]
        ft = FinetuningFamily(FinetuningConfig.from_spec(spec, "cpu"),
                              catalog.model_card("tiny"), _context(tmp_path, spec))
        with pytest.raises(BadInput, match=message):
            ft.validate()


def _loss_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    y[4] = y[30] = xent.IGNORE_INDEX
    return h, w, y


def test_the_torch_path_is_the_chunked_loss_unchanged() -> None:
    """kernel=torch, and liger asked for on CPU tensors, compute bit for bit what the loss
    computed without options; the mean equals torch's cross_entropy over the kept rows."""
    h, w, y = _loss_inputs()
    results = []
    for options in (None, LossOptions(kernel="torch"), LossOptions(kernel="liger")):
        h.grad = w.grad = None
        total, n = chunked_cross_entropy(h, w, y, chunk_rows=8, options=options)
        total.backward()
        results.append((total.detach(), n, h.grad.clone(), w.grad.clone()))
    for total, n, gh, gw in results[1:]:
        assert n == results[0][1] == 35
        assert torch.equal(total, results[0][0])
        assert torch.equal(gh, results[0][2]) and torch.equal(gw, results[0][3])
    want = torch.nn.functional.cross_entropy(h.detach() @ w.detach().T, y, reduction="sum")
    torch.testing.assert_close(results[0][0], want, rtol=1e-5, atol=1e-5)


def test_the_liger_path_hands_liger_the_kept_rows_and_the_chunk_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, bias: Any = None,
             **kw: Any) -> torch.Tensor:
        calls.append({"rows": h.shape[0], "bias": bias, **kw})
        return torch.nn.functional.cross_entropy(h @ weight.T, y, reduction="sum",
                                                 ignore_index=kw["ignore_index"])

    module = types.ModuleType("liger_kernel.transformers.functional")
    module.liger_fused_linear_cross_entropy = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", module)
    monkeypatch.setattr(xent, "_use_liger",
                        lambda options, h: options is not None and options.kernel == "liger")
    h, w, y = _loss_inputs()
    total, n = chunked_cross_entropy(h, w, y, chunk_rows=8, options=LossOptions(kernel="liger"))
    assert n == 35 and total.dtype == torch.float32
    assert calls == [{"rows": 35, "bias": None, "ignore_index": xent.IGNORE_INDEX,
                      "reduction": "sum", "accum_dtype": torch.float32,
                      "chunk_mem_const": round(50 * 8 / (16 * 35))}]
    plain, _ = chunked_cross_entropy(h, w, y, chunk_rows=8)
    torch.testing.assert_close(total, plain, rtol=1e-5, atol=1e-5)


def test_liger_chunk_const_sizes_chunks_like_the_torch_path() -> None:
    # the 0.5B shape: 16,384 tokens, hidden 896, vocabulary 151,936, the default 1 GiB chunk
    rows = xent.default_chunk_rows(151_936)
    assert rows == 1766
    const = xent.liger_chunk_const(rows, 16_384, 896, 151_936)
    assert const == 18
    inc = -(-151_936 // (const * 896))  # liger's chunk: next_pow2(ceil(tokens / inc)) rows
    assert (inc, 1 << (-(-16_384 // inc) - 1).bit_length()) == (10, 2048)
    assert xent.liger_chunk_const(10**6, 100, 64, 256) == 4  # rows beyond the tokens
    assert xent.liger_chunk_const(1, 10**6, 4096, 256) == 1  # never below liger's minimum


def test_auto_on_cpu_trains_on_the_torch_path_and_records_it(tmp_path: Path) -> None:
    losses = {}
    for kernel in ("auto", "torch"):
        spec = RunSpec(run_id=f"k-{kernel}", family="pretraining", technique="gqa",
                       model="tiny", device="cpu",
                       params={"eval_tokens": 0, "loss_kernel": kernel},
                       **SHORT)  # type: ignore[arg-type]
        run_dir = tmp_path / kernel
        run_dir.mkdir()
        ctx = RunContext(spec, run_dir, run_dir, "cpu", EventLog(run_dir / "events.jsonl"))
        family = PretrainingFamily(PretrainingConfig.from_spec(spec, "cpu"),  # type: ignore[arg-type]
                                   catalog.resolve("pretraining", "gqa", "tiny")[1], ctx)
        family.validate()
        result = family.run()
        assert result.info["loss_kernel"] == "torch"
        assert result.info["loss_impl"].endswith("auto rows a chunk, eager")
        losses[kernel] = result.info["final_loss"]
    assert losses["auto"] == losses["torch"]
