"""`efficientllm run -f pretraining -t nsa -m tiny` on CPU, through the CLI, the daemon and the
runner: the torch reference trains on the shipped text and says it ran; bad NSA sizes are
refused with one line before a runner starts."""

from __future__ import annotations

import json

import pytest

from .conftest import Cli

pytestmark = pytest.mark.slow


def test_nsa_trains_on_tiny_through_the_cli(cli: Cli) -> None:
    out = cli("run", "-f", "pretraining", "-t", "nsa", "-m", "tiny", "--device", "cpu",
              "--batch-size", "4", "--seq-len", "128", "--warmup", "2", "--steps", "10",
              "--set", "lr=2e-3", "--set", "nsa_block=16", "--set", "nsa_blocks=4",
              "--set", "nsa_window=32", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert (run["status"], run["group_name"]) == ("ok", "attention")
    info = run["info"]
    assert info["kernels"] == ("torch reference (runners.kernels.nsa.nsa_reference: dense "
                               "masked SDPA, not CUDA)")
    assert info["attention_kernel"] == info["kernels"]
    nsa = info["nsa"]
    assert (nsa["block_size"], nsa["blocks"], nsa["window"]) == (16, 4, 32)
    assert (nsa["query_heads"], nsa["kv_heads"], info["heads"]) == (16, 1, 16)
    # the keys a query meets: 1.5 x 128 / 16 compressed + 4 x 16 chosen + the 32 window
    assert "context=108" in info["mfu_formula"]
    events = [json.loads(line) for line in
              (cli.home / "runs" / run["run_id"] / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["kind"] == "step"]
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, losses
    assert run["metrics"]["loss"] == pytest.approx(sum(losses[-5:]) / 5)


@pytest.mark.parametrize(("sets", "message"), [
    (("--seq-len", "96"), "nsa needs seq_len a multiple of nsa_block 64, got seq_len 96"),
    (("--set", "nsa_block=48"), "nsa_block must be a power of two of at least 16, got 48"),
    (("--set", "nsa_blocks=64"), "nsa_blocks must be a power of two within [4, nsa_block / 2 "
                                 "= 32], got 64"),
    (("--set", "nsa_window=-1"), "nsa_window must be at least 0, got -1"),
])
def test_bad_nsa_sizes_exit_2_with_one_line(cli: Cli, sets: tuple[str, ...],
                                            message: str) -> None:
    out = cli("run", "-f", "pretraining", "-t", "nsa", "-m", "tiny", "--device", "cpu", *sets)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"efficientllm: error: {message}"]
    runs = cli.home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
