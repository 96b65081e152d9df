"""Training on several processes end to end on CPU: `efficientllm run --world-size 2` starts
the runner under torchrun (gloo, 2 CPU processes); rank 0's merged events and metrics are
checked against the stored rows and the other rank's own event file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Cli

pytestmark = pytest.mark.slow

COMMON = ("--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "2",
          "--seq-len", "32")


def _rows(cli: Cli, sql: str) -> list[dict[str, Any]]:
    rows = cli.json("sql", sql, "--format", "json")
    assert isinstance(rows, list)
    return rows


def _rank_events(cli: Cli, run_id: str, rank: int) -> list[dict[str, Any]]:
    name = "events.jsonl" if rank == 0 else f"events.rank{rank}.jsonl"
    path = cli.home / "runs" / run_id / name
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_merged(cli: Cli, doc: dict[str, Any], tokens_per_step: int) -> None:
    """Stored steps are the ranks' merged steps; the run's metrics follow the rules of
    runners.distributed from the ranks' own numbers."""
    rid, info, m = doc["run_id"], doc["info"], doc["metrics"]
    assert doc["world_size"] == 2 and info["world_size"] == 2 and info["sharding"] == "ddp"
    steps = _rows(cli, f"select step, latency_s, tokens, extra from steps where run_id = "
                       f"'{rid}' and phase = 'measure' order by t_ns")
    assert len(steps) == 3
    rank1 = [e for e in _rank_events(cli, rid, 1)
             if e["kind"] == "step" and e["phase"] == "measure"]
    assert len(rank1) == 3
    for row, theirs in zip(steps, rank1, strict=True):
        per_rank = json.loads(row["extra"])["rank_latency_s"]
        assert len(per_rank) == 2 and per_rank[1] == pytest.approx(theirs["latency_s"])
        assert row["latency_s"] == pytest.approx(max(per_rank))
        assert row["tokens"] == tokens_per_step
    assert m["al_s"] == pytest.approx(sum(s["latency_s"] for s in steps) / 3)
    seconds = info["rank_measure_s"]
    rates = info["rank_metrics"]["tokens_per_s"]
    assert len(rates) == 2 and all(r > 0 for r in rates)
    want = sum(r * s for r, s in zip(rates, seconds, strict=True)) / max(seconds)
    assert m["tokens_per_s"] == pytest.approx(want, rel=1e-9)
    # Both CPU processes share one package: one device, sampled once.
    assert info["sample_devices"] == ["cpu", "cpu"]
    (run,) = _rows(cli, f"select workload from run_metrics where run_id = '{rid}'")
    assert run["workload"].endswith("| 2 devices | data shipped")


def test_pretraining_on_two_cpu_processes(cli: Cli) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "gqa", *COMMON, "--world-size", "2",
                   "--set", "eval_tokens=0", "--json", timeout=180)
    assert doc["status"] == "ok", doc.get("error_text")
    _check_merged(cli, doc, tokens_per_step=2 * 2 * 32)
    # Scaling efficiency against the same workload on one process, worked out when read.
    one = cli.json("run", "-m", "tiny", "-t", "gqa", *COMMON, "--set", "eval_tokens=0",
                   "--json", timeout=180)
    assert one["status"] == "ok" and one["world_size"] == 1
    shown = cli.json("show", doc["run_id"], "--json")
    speedup = doc["metrics"]["tokens_per_s"] / one["metrics"]["tokens_per_s"]
    assert shown["scaling"] == {"world_size": 2, "base_run_id": one["run_id"],
                                "speedup": pytest.approx(speedup),
                                "efficiency": pytest.approx(speedup / 2)}
    assert "scaling" not in cli.json("show", one["run_id"], "--json")


def test_finetuning_on_two_cpu_processes(cli: Cli) -> None:
    doc = cli.json("run", "-m", "tiny", "-t", "lora", *COMMON, "--world-size", "2",
                   "--set", "save=false", "--json", timeout=180)
    assert doc["status"] == "ok", doc.get("error_text")
    steps = _rows(cli, f"select tokens from steps where run_id = '{doc['run_id']}' and "
                       "phase = 'measure' order by t_ns")
    rank_tokens = [[e["tokens"] for e in _rank_events(cli, doc["run_id"], r)
                    if e["kind"] == "step" and e["phase"] == "measure"] for r in (0, 1)]
    # Rank 0's file holds the merged steps; rank 1's, its own half.
    assert [s["tokens"] for s in steps] == rank_tokens[0]
    mine = [e for e in _rank_events(cli, doc["run_id"], 1) if e["kind"] == "step"
            and e["phase"] == "measure"]
    _check_merged(cli, doc, tokens_per_step=steps[0]["tokens"])
    assert steps[0]["tokens"] > mine[0]["tokens"] > 0
    losses = [e["loss"] for e in mine]
    assert len(losses) == 3


@pytest.mark.parametrize(("args", "needle"), [
    (("-t", "gqa", "--device", "cpu", "--gpus", "2"), "--world-size"),
    (("-t", "fp32", "--device", "cpu", "--world-size", "2"), "inference runs on one device"),
    (("-t", "gqa", "--device", "cuda:0,cuda:2"), "follow each other"),
    (("-t", "gqa", "--device", "cpu", "--world-size", "0"), "--world-size/--gpus must be"),
])
def test_bad_world_sizes_are_one_line(cli: Cli, args: tuple[str, ...], needle: str) -> None:
    out = cli("run", "-m", "tiny", *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr
    assert not (cli.home / "runs").exists() or not any((cli.home / "runs").iterdir())


def test_fsdp2_pretraining_on_two_cpu_processes(cli: Cli) -> None:
    # sharded parameters: the gradient norm is a DTensor, gathered before it is reported
    doc = cli.json("run", "-m", "tiny", "-t", "gqa", *COMMON, "--world-size", "2",
                   "--set", "sharding=fsdp2", "--json", timeout=180)
    assert doc["status"] == "ok", doc.get("error_text")
    rows = _rows(cli, "select info->>'sharding' as sharding from runs "
                      f"where run_id = '{doc['run_id']}'")
    assert rows == [{"sharding": "fsdp2"}]
    # the evaluation gathered the shards: better than a uniform guess over the 260 byte ids
    ppl = doc["metrics"]["eval_ppl"]
    assert ppl is not None and 1.0 < ppl < 260.0
