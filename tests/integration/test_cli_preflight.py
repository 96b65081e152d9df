"""Bad input is refused by the CLI before a runner starts: exit 2, one line, nothing stored."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Cli

REFUSE_WITHIN_S = 2.0
"""A refusal needs no runner (which takes seconds to import torch) and no database."""


def _refused(cli: Cli, *args: str) -> str:
    """Run the CLI; check it refused at once and left nothing behind; its one stderr line."""
    start = time.monotonic()
    out = cli(*args)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""
    assert elapsed < REFUSE_WITHIN_S, f"took {elapsed:.2f} s"
    runs = cli.home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
    assert not (cli.home / "efficientllm.duckdb").exists()  # not even opened: no row
    return lines[0]


def _bad_sft(tmp_path: Path) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n"
                    + json.dumps({"prompt": "c", "answer": "d"}) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("args", "message"), [
    (("-m", "tiny", "-t", "lora", "--set", "rank=abc"),
     "efficientllm: error: parameter 'rank': expected int, got 'abc'"),
    (("-m", "tiny", "-t", "fp32", "--set", "engine=warp"),
     "efficientllm: error: unknown engine 'warp' (choose from auto, loop, eager, static, "
     "graph, compile, fused)"),
    (("-m", "tiny", "-t", "int8", "--set", "backend=marlin"),
     "efficientllm: error: unknown backend 'marlin' (choose from auto, quanto, torchao, "
     "gemlite, bnb; or bitsandbytes/optimum-quanto)"),
    (("-m", "tiny", "-t", "w8a8", "--set", "backend=bnb"),
     "efficientllm: error: w8a8 has no bnb backend (choose from auto, quanto)"),
    (("-m", "tiny", "-t", "lora", "--set", "bogus_key=1"),
     "efficientllm: error: unknown --set parameter(s) for finetuning: bogus_key (valid: "),
    (("-m", "tiny", "-t", "lora", "--set", "dropout=1"),
     "efficientllm: error: dropout must be within [0, 1), got 1.0"),
    (("-m", "smollm2-135m", "-t", "mla"),
     "efficientllm: error: pretraining trains from random weights; smollm2-135m is a "
     "real-weights model"),
])
def test_run_refuses_bad_input_before_a_runner_starts(cli: Cli, args: tuple[str, ...],
                                                      message: str) -> None:
    assert _refused(cli, "run", "--device", "cpu", *args).startswith(message)


def test_run_refuses_a_malformed_finetuning_dataset(cli: Cli, tmp_path: Path) -> None:
    path = _bad_sft(tmp_path)
    line = _refused(cli, "run", "-m", "tiny", "-t", "lora", "--device", "cpu",
                    "--dataset", str(path))
    assert line == (f"efficientllm: error: dataset {str(path.resolve())!r}: line 2: field "
                    "'response' must be a string, got NoneType")


def test_sweep_with_one_bad_pair_is_refused_whole(cli: Cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[defaults]\ndevice = "cpu"\n\n'
                     '[[run]]\nmodel = "tiny"\ntechnique = "fp32"\n\n'
                     '[[run]]\nmodel = "smollm2-135m"\ntechnique = "mla"\n', encoding="utf-8")
    line = _refused(cli, "sweep", str(sweep))
    assert line.startswith(f"efficientllm: error: {sweep} [[run]] #2: pretraining trains from "
                           "random weights; smollm2-135m")

