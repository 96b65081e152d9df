"""Weight quantization on the tiny model: bytes really stored, exclusions, calibration,
kernel reports, and the backends that cannot run here."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from runners.errors import Unsupported
from runners.models import build as model_mod
from runners.models import catalog
from runners.techniques import quantize as quant

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
LINEARS = 4 * 7  # tiny: 4 layers of q, k, v, o, gate, up, down


def _tiny(dtype: torch.dtype = torch.bfloat16) -> model_mod.BuiltModel:
    return model_mod.build(catalog.model_card("tiny"), dtype, "cpu", seed=0)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _calibrate(model: torch.nn.Module) -> None:
    with torch.no_grad():
        model(input_ids=IDS)


def test_plain_tensor_bytes() -> None:
    assert quant.stored_bytes(torch.zeros(3, 5, dtype=torch.bfloat16)) == 30
    assert quant.model_bytes(_tiny(torch.float32).model) == _tiny(torch.float32).size.weight_bytes


@pytest.mark.parametrize(("technique", "max_rel_err"), [
    ("int8", 0.05), ("fp8", 0.15), ("w8a8", 0.1), ("int4", 0.5)])
def test_quantized_tiny_is_smaller_and_close(technique: str, max_rel_err: float) -> None:
    built = _tiny()
    before = quant.model_bytes(built.model)
    reference = _logits(built.model)
    q = quant.QUANTIZATIONS[technique]
    quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE,
                   (lambda: _calibrate(built.model)) if q.calibrated else None)
    assert quant.quantized_linear_count(built.model) == LINEARS
    after = quant.model_bytes(built.model)
    assert after < before
    assert model_mod.measure(built.model).weight_bytes == after
    assert model_mod.measure(built.model).total_params == built.size.total_params
    out = _logits(built.model)
    assert torch.isfinite(out).all()
    assert ((out - reference).norm() / reference.norm()).item() < max_rel_err
    # lm_head is excluded by default, so the tied embedding is still one tensor
    model = built.model
    assert type(model.lm_head.weight.data) is torch.Tensor
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bytes_are_packed_data_plus_scales() -> None:
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int8"], ())
    w = built.model.model.layers[0].mlp.up_proj.weight  # [1024, 256]
    assert quant.stored_bytes(w) == 1024 * 256 + 1024 * 2  # int8 data + a bf16 scale a row
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int4"], quant.DEFAULT_EXCLUDE)
    w = built.model.model.layers[0].mlp.up_proj.weight
    # 4-bit data, and a bf16 scale and shift per group of 128 inputs per row
    assert quant.stored_bytes(w) == 1024 * 256 // 2 + 2 * (256 // 128) * 1024 * 2


def test_quantizing_the_tied_head_stores_a_second_copy() -> None:
    excluded, everything = _tiny(), _tiny()
    quant.quantize(excluded.model, quant.QUANTIZATIONS["int8"], quant.DEFAULT_EXCLUDE)
    quant.quantize(everything.model, quant.QUANTIZATIONS["int8"], quant.exclude_patterns("none"))
    assert quant.quantized_linear_count(everything.model) == LINEARS + 1
    assert quant.model_bytes(everything.model) > quant.model_bytes(excluded.model)


def test_w8a8_calibrates_activation_scales() -> None:
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["w8a8"], quant.DEFAULT_EXCLUDE,
                   lambda: _calibrate(built.model))
    proj = built.model.model.layers[0].self_attn.q_proj
    assert proj.activation_qtype is not None
    assert float(proj.input_scale) != 1.0  # set by the calibration pass
    with pytest.raises(ValueError, match="calibration"):
        quant.quantize(_tiny().model, quant.QUANTIZATIONS["w8a8"], ())


def test_kernel_report_names_what_runs() -> None:
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int4"], quant.DEFAULT_EXCLUDE)
    report = quant.kernel_report(built.model, "cpu")
    assert report["weight_classes"] == {"Tensor": 1, "TinyGemmWeightQBitsTensor": LINEARS}
    assert "int4pack" in report["kernels"]["TinyGemmWeightQBitsTensor"]
    assert quant.extension_needed(built.model, "cpu") is None  # a torch built-in kernel
    built = _tiny()
    quant.quantize(built.model, quant.QUANTIZATIONS["int8"], quant.DEFAULT_EXCLUDE)
    assert "int8" in quant.kernel_report(built.model, "cuda:0")["kernels"]["WeightQBytesTensor"]


def test_fp32_int4_uses_the_quanto_extension() -> None:
    """The one test that needs quanto's C++ extension (compiled once per environment)."""
    built = _tiny(torch.float32)
    reference = _logits(built.model)
    quant.quantize(built.model, quant.QUANTIZATIONS["int4"], quant.DEFAULT_EXCLUDE)
    assert quant.extension_needed(built.model, "cpu") == "quanto_cpp"
    quant.build_extension("quanto_cpp")
    with torch.no_grad():  # quanto's packed int4 weights fail under inference_mode
        out = built.model(input_ids=IDS).logits
    assert ((out - reference).norm() / reference.norm()).item() < 0.5


def test_exclude_patterns() -> None:
    assert quant.exclude_patterns("lm_head") == ("lm_head",)
    assert quant.exclude_patterns(" lm_head , model.layers.0.* ") == ("lm_head",
                                                                    "model.layers.0.*")
    assert quant.exclude_patterns("none") == () == quant.exclude_patterns("")


def test_excluding_everything_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="no layer was quantized"):
        quant.quantize(_tiny().model, quant.QUANTIZATIONS["int8"], ("*",))


def test_a_layer_the_kernel_cannot_pack_is_unsupported() -> None:
    # tinygemm packs int4 rows in tiles of 16; tiny's 260-token head is not one
    with pytest.raises(Unsupported, match="int4: quanto cannot quantize this model here"):
        quant.quantize(_tiny().model, quant.QUANTIZATIONS["int4"], ())


@pytest.mark.parametrize("technique", ["int8-ao", "int4-ao"])
def test_torchao_techniques_are_unsupported_without_torchao(
        technique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(Unsupported, match="needs torchao, which is not installed"):
        quant.check_available(quant.QUANTIZATIONS[technique], "cuda:0")
    quant.check_available(quant.QUANTIZATIONS["int8"], "cpu")  # quanto is there


def test_torchao_int8_weight_only_runs_on_the_cpu() -> None:
    built = _tiny()
    reference = _logits(built.model)
    q = quant.QUANTIZATIONS["int8-ao"]
    quant.check_available(q, "cpu")
    quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE)
    assert quant.quantized_linear_count(built.model) == LINEARS
    report = quant.kernel_report(built.model, "cpu")
    assert report["weight_classes"]["Tensor"] == 1 and report["kernels"]
    assert quant.model_bytes(built.model) < 0.6 * model_mod.measure(_tiny().model).weight_bytes
    out = _logits(built.model)
    assert ((out - reference).norm() / reference.norm()).item() < 0.05


def test_torchao_int4_needs_cuda() -> None:
    with pytest.raises(Unsupported, match="needs a CUDA device"):
        quant.check_available(quant.QUANTIZATIONS["int4-ao"], "cpu")


def test_out_of_memory_while_quantizing_stays_out_of_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import optimum.quanto

    def full(model: torch.nn.Module) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(optimum.quanto, "freeze", full)
    with pytest.raises(RuntimeError, match="out of memory") as e:
        quant.quantize(_tiny().model, quant.QUANTIZATIONS["int8"], quant.DEFAULT_EXCLUDE)
    assert not isinstance(e.value, Unsupported)  # classified as `oom` by the runner


def test_a_missing_torchao_kernel_package_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchao.quantization

    def needs(*args: object, **kwargs: object) -> None:
        raise ImportError("Requires mslk >= 1.0.0")

    monkeypatch.setattr(torchao.quantization, "quantize_", needs)
    with pytest.raises(Unsupported, match="int4-ao: torchao's int4 layout needs a package.*mslk"):
        quant.quantize(_tiny().model, quant.QUANTIZATIONS["int4-ao"], quant.DEFAULT_EXCLUDE)
