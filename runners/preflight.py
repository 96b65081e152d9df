"""What the launcher checks before a runner starts: a spec's `--set` parameters, its model x
technique pair and the head of its dataset, in one call, `validate_spec`.

Why here and not only in the runner: a runner takes seconds to import torch before its own
checks run, and a run it refuses is stored as a failed run. These are the runners' own rules
(runners.params, the dataset readers' record rules), with no torch, so the app (CLI `run`,
`sweep`, the Launch screen) can refuse bad input at once and leave nothing behind. The runner
checks everything again on its side, with what only it knows (the device, installed kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runners import params
from runners.data import corpus, sft, textstream
from runners.errors import BadInput
from runners.protocol import RunSpec

DATASET_CHECKS: dict[str, Callable[[str], None]] = {
    "inference": corpus.check_head, "finetuning": sft.check_head,
    "pretraining": textstream.check_head}
"""Family -> the cheap check of the dataset format that family reads."""


def validate_spec(spec: RunSpec, card: Any) -> dict[str, Any]:
    """The spec's parameters, typed and checked (defaults filled in).

    Args:
        spec: The run to check.
        card: The model's card (runners.models.cards.ModelCard, or a catalog entry as a
            mapping); None skips the pair check (the runner checks it then).

    Raises:
        BadInput: One line naming the first problem: an unknown `--set` key (with the valid
            ones), a value of the wrong type, out of its choices or range, a pair the model
            card rules out, or a dataset that is missing, empty or malformed (with its line).
    """
    values = params.resolve(spec.family, spec.params)
    if card is not None:
        problem = params.pair_problem(spec.family, spec.technique, card, seq_len=spec.seq_len,
                                      new_tokens=spec.new_tokens, values=values)
        if problem:
            raise BadInput(problem)
    if spec.dataset is not None:
        DATASET_CHECKS[spec.family](spec.dataset)
    return values
