"""`efficientllm eval RUN_ID`: score a stored run's model on more quality tasks later,
without measuring its cost again.

The re-score is a queued job like any run (the dispatcher starts it on the run's device and
stores it), built from the stored run's own configuration plus `score_of`: inference builds
the same model (dtype, quantization, reference) and scores it; fine-tuning restores what the
run trained from its RUN_DIR/adapter/. Its scores are stored onto the stored run (metrics of
the same name replaced, an `eval` event, `info.evals`); its cost metrics are never touched.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from efficientllm_tui.commands.common import (
    emit_json,
    home_dir,
    open_store,
    print_run,
    resolve_ids,
    run_doc,
)
from efficientllm_tui.commands.launch import queue_and_follow
from efficientllm_tui.errors import BadInput
from efficientllm_tui.runs import ingest, specs
from profiling import home as homes
from runners.protocol import ProtocolError, new_run_id, parse_set

SCORED_FAMILIES = ("inference", "finetuning")
EVAL_KEYS = ("quality", "quality_items")
"""The only `--set` keys an eval takes: everything else is the stored run's."""


def eval_sets(sets: list[str]) -> dict[str, Any]:
    """The `--set` values of an eval; BadInput for any key but EVAL_KEYS."""
    try:
        asked = parse_set(sets)
    except ProtocolError as e:
        raise BadInput(str(e)) from None
    other = sorted(set(asked) - set(EVAL_KEYS))
    if other:
        raise BadInput(f"eval takes only --set {' and '.join(EVAL_KEYS)} (the rest is the "
                       f"stored run's configuration); got {', '.join(other)}")
    return asked


def eval_params(run: dict[str, Any], asked: dict[str, Any]) -> dict[str, Any]:
    """The stored run's parameters with the quality tasks of the re-score: the tasks it
    scored before plus those asked now (so `quality` and MCR cover one set of tasks,
    scored in one job on the model and its reference); `suite` when neither names any."""
    params = dict(run.get("params") or {})
    tasks: list[str] = []
    for value in (params.get("quality"), asked.get("quality")):
        for name in str(value or "").split(","):
            name = name.strip()
            if name and name.lower() not in ("off", "none") and name not in tasks:
                tasks.append(name)
    params["quality"] = ",".join(tasks) or "suite"
    if "quality_items" in asked:
        params["quality_items"] = asked["quality_items"]
    params[ingest.EVAL_PARAM] = run["run_id"]
    return params


def check_scorable(run: dict[str, Any]) -> None:
    """BadInput unless `run` is a finished inference or fine-tuning run on real weights."""
    rid = run["run_id"]
    if run.get("family") not in SCORED_FAMILIES:
        raise BadInput(f"run {rid} is a {run.get('family')} run: eval scores inference and "
                       "fine-tuning runs (a pretraining run's quality is its eval_ppl)")
    if run.get("status") != "ok":
        raise BadInput(f"run {rid} ended {run.get('status')}: only a run that ended ok has a "
                       "model to score")
    if run.get("weights") != "real":
        raise BadInput(f"run {rid} has random weights: no quality signal to score")
    if (run.get("params") or {}).get(ingest.EVAL_PARAM):
        raise BadInput(f"{rid} is an eval job, not a run")


def cmd_eval(args: argparse.Namespace) -> int:
    asked = eval_sets(args.sets)
    if importlib.util.find_spec("lm_eval") is None:  # found, never imported here
        raise BadInput("eval scores through lm-eval, which is not installed: pip install "
                       "'efficientllm-tui[eval]'")
    home = home_dir()
    store = open_store(args, home)
    store.check()
    (run_id,) = resolve_ids(store, home, [args.run_id])
    run = store.get_run(run_id)
    if run is None:
        raise BadInput(f"run {run_id} is not stored in {store.path} (see `efficientllm runs`)")
    check_scorable(run)
    params = eval_params(run, asked)
    trained = homes.runs_dir(home) / run_id / "adapter"
    if run["family"] == "finetuning" and not trained.is_dir():
        raise BadInput(f"run {run_id} kept nothing it trained ({trained} is missing: it ran "
                       "with save=false, or its run dir was removed); run it again with "
                       "--set quality=...")
    fields = {k: run.get(k) for k in ("steps", "warmup", "batch_size", "seq_len", "new_tokens",
                                      "seed", "dataset")}
    device = str(args.device or run.get("device") or "auto")
    spec = specs.build_spec(model=run["model"], technique=run["technique"],
                            family=run["family"], device=device,
                            params=params, **fields,
                            run_id=f"eval-{new_run_id(run['model'], run['technique'])}")
    status = queue_and_follow(spec, store, home, what="eval", show=not args.json)
    if status is None:
        return 130
    stored = store.get_run(run_id) or run
    record: dict[str, Any] = next((e for e in (stored.get("info") or {}).get("evals", [])
                   if e.get("eval_id") == spec.run_id), {})
    doc = run_doc(stored, stored.get("status", ""))
    doc["eval"] = record
    if args.json:
        emit_json(doc)
    elif status == "ok":
        print_run(doc)
    if status == "ok":
        return 0
    why = record.get("error_text") or status
    if record.get("error_type") in ("bad_input", "unsupported"):
        print(f"efficientllm: error: {why}", file=sys.stderr)
        return 2
    print(f"efficientllm: eval {status}: {why}", file=sys.stderr)
    return 1
