"""The weight-quantization backends (`--set backend`): the parameter and its rules, which
backend `auto` picks on the CPU, the reasons a GPU-only backend gives here, and the layouts
each backend builds (bitsandbytes' only where its optional wheel is installed)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import efficientllm_data
import pytest
import torch

from runners import params
from runners.errors import BadInput, Unsupported
from runners.families import inference_steps as steps
from runners.models import build as model_mod
from runners.models import catalog
from runners.techniques import quant_backends as qb
from runners.techniques import quantize as quant

TINY = efficientllm_data.find_model("tiny")
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
LINEARS = 4 * 7  # tiny: 4 layers of q, k, v, o, gate, up, down
Q = quant.QUANTIZATIONS


def _tiny(dtype: torch.dtype = torch.float32) -> model_mod.BuiltModel:
    return model_mod.build(catalog.model_card("tiny"), dtype, "cpu", seed=0)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.fixture
def hidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Module names to pretend are not installed (add to the set)."""
    names: set[str] = set()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in names else real(name, *a))
    yield names


# -- the parameter ---------------------------------------------------------------------------

def test_unknown_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(BadInput) as e:
        params.resolve("inference", {"backend": "marlin"})
    assert str(e.value) == ("unknown backend 'marlin' (choose from auto, quanto, torchao, "
                            "gemlite, bnb; or bitsandbytes/optimum-quanto)")
    assert params.resolve("inference", {})["backend"] == "auto"
    assert params.resolve("inference", {"backend": " BitsAndBytes "})["backend"] == "bnb"


@pytest.mark.parametrize(("technique", "backend", "message"), [
    ("fp32", "gemlite", "--set backend applies to quantized techniques; fp32 runs in fp32"),
    ("w8a8", "gemlite", "w8a8 has no gemlite backend (choose from auto, quanto)"),
    ("fp8", "bnb", "fp8 has no bnb backend (choose from auto, quanto, torchao, gemlite)"),
    ("int8-ao", "quanto", "int8-ao has no quanto backend (choose from auto, torchao)"),
])
def test_a_backend_that_does_not_serve_the_technique_is_bad_input(
        technique: str, backend: str, message: str) -> None:
    assert params.pair_problem("inference", technique, TINY, seq_len=16, new_tokens=4,
                               values={"backend": backend}) == message


def test_the_backend_table_and_the_layouts_agree() -> None:
    """params (stdlib, checked before a runner starts) and the layouts (torch) list the
    same (technique, backend) pairs, and `auto` only tries backends that serve the bits."""
    listed = {(b, Q[t].bits) for t, backends in params.QUANT_BACKENDS.items() for b in backends}
    assert listed == set(quant.FORMATS)
    assert set(params.QUANT_BACKENDS) == set(Q) and params.QUANT_BACKEND_NAMES == qb.BACKENDS
    for device in qb.PREFERENCE.values():
        for bits, order in device.items():
            assert set(order) <= set(params.QUANT_BACKENDS[bits]), (bits, order)


# -- auto on the CPU -------------------------------------------------------------------------

@pytest.mark.parametrize(("technique", "weights", "group_size"), [
    ("int8", "qint8", None), ("int4", "qint4", 128), ("fp8", "qfloat8", None),
    ("w8a8", "qint8", None)])
def test_auto_picks_quanto_on_the_cpu(technique: str, weights: str,
                                      group_size: int | None) -> None:
    q = quant.resolve(Q[technique], "auto", "cpu", torch.float32)
    assert (q.backend, q.weights, q.group_size, q.id) == ("quanto", weights, group_size,
                                                          technique)
    assert q.calibrated == (technique == "w8a8")


def test_auto_takes_the_next_backend_that_runs(hidden: set[str]) -> None:
    hidden.add("optimum.quanto")
    q = quant.resolve(Q["int8"], "auto", "cpu", torch.float32)
    assert (q.backend, q.weights) == ("torchao", "int8")
    hidden.add("bitsandbytes")
    with pytest.raises(Unsupported) as e:
        quant.resolve(Q["int4"], "auto", "cpu", torch.float32)
    assert str(e.value) == (
        "int4: no backend can run it on cpu (quanto: needs optimum-quanto, which is not "
        "installed here (pip install optimum-quanto); bnb: needs bitsandbytes, which is not "
        "installed here (pip install bitsandbytes))")


def test_a_missing_parent_package_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_spec('optimum.quanto') raises, not returns None, when `optimum` is missing (as
    on the GPU image without the wheel): the backend is passed over, not a crash."""
    real = importlib.util.find_spec

    def find_spec(name: str, *a: object) -> object:
        if name.startswith("optimum"):
            raise ModuleNotFoundError("No module named 'optimum'")
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert quant.resolve(Q["int8"], "auto", "cpu").backend == "torchao"
    with pytest.raises(Unsupported, match="^int8 on quanto: needs optimum-quanto, which is not"):
        quant.check_available(Q["int8"], "cpu", "quanto")


# -- GPU-only backends here ------------------------------------------------------------------

def test_gemlite_is_unsupported_on_the_cpu(hidden: set[str], monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    hidden.add("gemlite")
    with pytest.raises(Unsupported) as e:
        quant.check_available(Q["int4"], "cpu", "gemlite")
    assert str(e.value) == ("int4 on gemlite: needs gemlite, which is not installed here "
                            "(pip install gemlite)")
    hidden.clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # installed, as on a GPU image
                        lambda name, *a: object() if name == "gemlite" else real(name, *a))
    with pytest.raises(Unsupported) as e:
        quant.check_available(Q["int8"], "cpu", "gemlite")
    assert str(e.value) == ("int8 on gemlite: gemlite's kernels are Triton GPU kernels and "
                            "need a CUDA device (got cpu)")


@pytest.mark.parametrize(("technique", "reason"), [
    ("fp8", "torchao's fp8 runs torch._scaled_mm, which needs a CUDA device of compute "
            "capability 8.9 or newer (got cpu)"),
    ("int4", "torchao's int4 runs the tinygemm layout, which needs a CUDA device (got cpu)"),
])
def test_torchao_layouts_that_need_cuda(technique: str, reason: str) -> None:
    with pytest.raises(Unsupported) as e:
        quant.check_available(Q[technique], "cpu", "torchao")
    assert str(e.value) == f"{technique} on torchao: {reason}"


def test_a_named_backend_on_an_ao_technique_must_be_its_own() -> None:
    assert quant.resolve(Q["int8-ao"], "torchao", "cpu").backend == "torchao"
    with pytest.raises(BadInput, match="int8-ao runs on torchao; --set backend=quanto"):
        quant.resolve(Q["int8-ao"], "quanto", "cpu")


# -- layouts ---------------------------------------------------------------------------------

def test_quanto_path_is_what_auto_ran_before() -> None:
    auto, named = _tiny(), _tiny()
    ran = quant.quantize(auto.model, Q["int8"], quant.DEFAULT_EXCLUDE)
    quant.quantize(named.model, quant.resolve(Q["int8"], "quanto", "cpu"),
                   quant.DEFAULT_EXCLUDE)
    assert (ran.backend, ran.weights) == ("quanto", "qint8")
    assert quant.weight_classes(auto.model) == {"Tensor": 1, "WeightQBytesTensor": LINEARS}
    assert torch.equal(_logits(auto.model), _logits(named.model))
    assert quant.model_bytes(auto.model) == quant.model_bytes(named.model)


def test_torchao_int4_uses_tinygemm_without_mslk() -> None:
    config = qb.torchao_config("int4", 128)
    assert (config.group_size, config.int4_packing_format) == (128, "tile_packed_to_4d")
    assert type(qb.torchao_config("fp8", None)).__name__ == (
        "Float8DynamicActivationFloat8WeightConfig")


def test_rtn_asymmetric_grid() -> None:
    row = torch.arange(16, dtype=torch.float32) * 0.5 - 1.0  # -1.0 .. 6.5 in steps of 0.5
    weight = torch.stack([row, row.flip(0) * 2, row])  # [3, 16]: one group of 16 a row
    codes, scale, zero = qb.rtn_asymmetric(weight, 4, 16)
    assert codes.dtype == torch.uint8 and codes.shape == (3, 16)
    assert codes.tolist() == [list(range(16)), list(range(15, -1, -1)), list(range(16))]
    assert scale.flatten().tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert zero.flatten().tolist() == pytest.approx([2.0, 2.0, 2.0])
    restored = (codes.float() - zero) * scale
    assert torch.allclose(restored, weight, atol=1e-6)
    codes, scale, zero = qb.rtn_asymmetric(weight, 4, 8)  # two groups a row
    assert scale.shape == zero.shape == (3, 2)
    assert scale[0].tolist() == pytest.approx([3.5 / 15, 3.5 / 15])


BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not BNB, reason="bitsandbytes (optional extra `gpu-quant`) not installed")
@pytest.mark.parametrize(("technique", "cls", "max_rel_err"), [
    ("int8", "Linear8bitLt", 0.05), ("int4", "Linear4bit", 0.5)])
def test_bitsandbytes_layouts_on_the_cpu(technique: str, cls: str, max_rel_err: float) -> None:
    built = _tiny()
    reference = _logits(built.model)
    q = quant.check_available(Q[technique], "cpu", "bnb")
    ran = quant.quantize(built.model, q, quant.DEFAULT_EXCLUDE)
    assert (ran.backend, ran.weights) == ("bnb", "int8" if technique == "int8" else "nf4")
    assert quant.weight_classes(built.model) == {"Tensor": 1, cls: LINEARS}
    assert quant.quantized_linear_count(built.model) == LINEARS
    report = quant.kernel_report(built.model, "cpu")
    assert report["kernels"][cls].startswith("bitsandbytes")
    up = built.model.model.layers[0].mlp.up_proj  # [1024, 256]
    data = 1024 * 256 if technique == "int8" else 1024 * 256 // 2
    scales = 1024 * 4 if technique == "int8" else 1024 * 256 // qb.BNB_4BIT_BLOCK * 4
    assert sum(quant.stored_bytes(t) for t in [*up.parameters(), *up.buffers()]) == \
        data + scales
    out = _logits(built.model)
    assert ((out - reference).norm() / reference.norm()).item() < max_rel_err


# -- the decode step around the quantized kernels ---------------------------------------------

def _family(device: str, backend: str | None, compile_mode: str = "default") -> Any:
    from types import SimpleNamespace

    from runners.families import inference

    fam = object.__new__(inference.InferenceFamily)
    fam.config = SimpleNamespace(device=device, compile_mode=compile_mode, engine="auto",
                                 new_tokens=4)
    fam._quant_report = None if backend is None else {"backend": backend}
    return fam


@pytest.mark.parametrize(("device", "backend", "mode", "compiles"), [
    ("cuda:0", "gemlite", "default", True),      # gemlite's Triton ops trace: compile the step
    ("cuda:0", "quanto", "default", False),      # tensor subclasses: the step stays uncompiled
    ("cuda:0", "torchao", "default", False),
    ("cuda:0", "bnb", "default", False),
    ("cuda:0", "gemlite", "none", False),        # compile_mode=none is obeyed
    ("cuda:0", None, "default", False),          # float weights: `fused` compiles on its own
    ("cpu", "gemlite", "default", False),
])
def test_which_quantized_steps_are_compiled(device: str, backend: str | None, mode: str,
                                            compiles: bool) -> None:
    fam = _family(device, backend, mode)
    assert steps.step_compiles(fam) is compiles


def test_the_compiled_quantized_engine_is_fused_with_its_flag() -> None:
    from runners.engines.decode import FusedEngine

    fam = _family("cpu", "gemlite")
    built = _tiny()
    engine = steps.make_engine(fam, steps.COMPILED_QUANTIZED, built, None, 0)
    assert isinstance(engine, FusedEngine) and engine.compile_quantized
    plain = steps.make_engine(fam, FusedEngine.name, built, None, 0)
    assert isinstance(plain, FusedEngine) and not plain.compile_quantized
    # on the CPU the lean step runs eagerly either way
    engine.prepare(IDS[:1, :8])
    assert engine.describe()["compiled"] is False


def test_gemlite_tuning_is_kept_per_gpu_and_never_fails_a_run(tmp_path: Path) -> None:
    # not gemlite, no home, or no CUDA: nothing is loaded or written
    assert qb.load_tuning("quanto", tmp_path, "cuda:0") is False
    assert qb.load_tuning("gemlite", None, "cuda:0") is False  # nothing shipped for a GPU yet
    assert qb.load_tuning("gemlite", tmp_path, "cpu") is False
    assert qb.save_tuning("gemlite", tmp_path, "cpu") is None
    assert not (tmp_path / "kernel_tuning").exists()
    path = qb.tuning_file(tmp_path, "cpu")
    assert path.parent == tmp_path / "kernel_tuning" and path.name.startswith("gemlite-")
    # what ships with the package for a card sits beside the shipped data, under the same name
    shipped = qb.shipped_tuning_file("cpu")
    assert shipped.parent.name == "kernel_tuning" and shipped.name == path.name
    assert shipped.parent.parent == Path(efficientllm_data.__file__).parent
