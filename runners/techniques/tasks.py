"""The offline quality suite: BBH-style algorithmic tasks generated from a seed, as JSONL
items and lm-eval task configs (docs/quality.md describes each task and its chance level).

Why generated, not downloaded: every machine (CI included) gets a real accuracy signal with
nothing fetched at run time, and the same seed gives byte-identical items everywhere.
Standard library only; every answer is computed here, never by a model.

Each item is multiple choice (`choices`, `target` the index of the right one), so a small
model is scored by the log-likelihood of each choice (lm-eval's `multiple_choice` output).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUITE_VERSION = 1
"""Bump when any generator changes: scores of different versions do not compare."""
SUITE_SEED = 14
"""The seed of the shipped suite (every run scores the same items)."""
DEFAULT_ITEMS = 50
"""Items per task by default."""
PREFIX = "ellm_"
"""Task names start with it, so they never clash with lm-eval's own tasks."""

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SuiteTask:
    """One generated task."""

    name: str
    """lm-eval task name (`ellm_boolean_expressions`)."""
    choices: int
    """Options per item."""
    doc: str
    """One line: what the model must do."""
    generate: Callable[[random.Random], Item]

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess."""
        return 1.0 / self.choices


def _options(rng: random.Random, answer: str, wrong: Sequence[str], k: int) -> tuple[list[str],
                                                                                       int]:
    """`answer` and k-1 distinct wrong options, shuffled; and the answer's index."""
    pool = list(dict.fromkeys(w for w in wrong if w != answer))
    picked = rng.sample(pool, k - 1) + [answer]
    rng.shuffle(picked)
    return picked, picked.index(answer)


def _item(prompt: str, answer: str, choices: list[str], target: int) -> Item:
    return {"input": prompt, "answer": answer, "choices": choices, "target": target}


# -- boolean expressions ---------------------------------------------------------------------

def _bool_expr(rng: random.Random, depth: int) -> tuple[str, bool]:
    if depth == 0 or (depth < 3 and rng.random() < 0.3):  # the top is always an operator
        value = rng.random() < 0.5
        return str(value), value
    kind = rng.choice(("not", "and", "or", "paren"))
    if kind == "not":
        text, value = _bool_expr(rng, depth - 1)
        # `not` binds tighter than `and`: a compound operand keeps its parentheses
        return (f"not {text}" if text in ("True", "False") else f"not ( {text} )"), not value
    if kind == "paren":
        text, value = _bool_expr(rng, depth - 1)
        return f"( {text} )", value
    (a, va), (b, vb) = _bool_expr(rng, depth - 1), _bool_expr(rng, depth - 1)
    # parenthesised operands keep Python's precedence out of the answer
    return f"( {a} ) {kind} ( {b} )", (va and vb) if kind == "and" else (va or vb)


def boolean_expressions(rng: random.Random) -> Item:
    text, value = _bool_expr(rng, 3)
    choices = ["True", "False"]
    return _item(f"Evaluate the boolean expression.\n{text} is", str(value), choices,
                 choices.index(str(value)))


# -- multi-step arithmetic -------------------------------------------------------------------

def _arith_expr(rng: random.Random, depth: int) -> tuple[str, int]:
    if depth == 0:
        n = rng.randint(-9, 9)
        return str(n), n
    (a, va), (b, vb) = _arith_expr(rng, depth - 1), _arith_expr(rng, depth - 1)
    op = rng.choice("+-*")
    value = va + vb if op == "+" else va - vb if op == "-" else va * vb
    return f"({a} {op} {b})", value


def multistep_arithmetic(rng: random.Random) -> Item:
    text, value = _arith_expr(rng, 2)
    wrong = [str(value + d) for d in (-10, -2, -1, 1, 2, 10)] + [str(-value)]
    choices, target = _options(rng, str(value), wrong, 4)
    return _item(f"Compute the value.\n{text} =", str(value), choices, target)


# -- word sorting ----------------------------------------------------------------------------

WORDS = (
    "apple", "river", "stone", "cloud", "garden", "silver", "pencil", "window", "forest",
    "candle", "bridge", "engine", "harbor", "island", "jacket", "kettle", "ladder", "meadow",
    "needle", "orange", "planet", "rocket", "saddle", "timber", "valley", "wagon", "yellow",
    "zebra", "anchor", "basket", "castle", "dragon", "falcon", "glacier", "hammer", "lantern",
    "marble", "nectar", "oyster", "pepper", "quartz", "ribbon", "summit", "tunnel", "violet",
)


def word_sorting(rng: random.Random) -> Item:
    words = rng.sample(WORDS, 5)
    answer = " ".join(sorted(words))
    wrong: list[str] = []
    while len(wrong) < 6:
        shuffled = rng.sample(words, len(words))
        wrong.append(" ".join(shuffled))
    wrong.append(" ".join(sorted(words, reverse=True)))
    choices, target = _options(rng, answer, wrong, 4)
    return _item(f"Sort the words alphabetically.\nList: {' '.join(words)}\nSorted:", answer,
                 choices, target)


# -- Dyck languages --------------------------------------------------------------------------

PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def dyck_languages(rng: random.Random) -> Item:
    opened: list[str] = []
    seq: list[str] = []
    length = rng.randint(6, 12)
    while len(seq) < length or len(opened) < 2:
        if opened and rng.random() < 0.35:
            seq.append(PAIRS[opened.pop()])
        else:
            opener = rng.choice(tuple(PAIRS))
            opened.append(opener)
            seq.append(opener)
    closing = [PAIRS[o] for o in reversed(opened)]
    answer = " ".join(closing)
    wrong = [" ".join(reversed(closing)), " ".join(closing[:-1]), " ".join(closing + [")"])]
    for _ in range(4):
        wrong.append(" ".join(rng.choice(tuple(PAIRS.values())) for _ in closing))
    choices, target = _options(rng, answer, wrong, 4)
    return _item("Close every open bracket, innermost first.\n"
                 f"Input: {' '.join(seq)}\nClosing:", answer, choices, target)


# -- object counting -------------------------------------------------------------------------

OBJECTS = {
    "fruits": ("apple", "banana", "peach", "plum", "grape", "orange", "nectarine"),
    "musical instruments": ("piano", "flute", "drum", "violin", "trumpet", "accordion"),
    "animals": ("cat", "dog", "rabbit", "goat", "snake", "mouse", "donkey"),
    "vegetables": ("carrot", "onion", "cabbage", "potato", "yam", "celery"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five")


IRREGULAR = {"peach": "peaches", "potato": "potatoes", "mouse": "mice"}


def _plural(noun: str) -> str:
    return IRREGULAR.get(noun, noun + "s")


def _one(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def object_counting(rng: random.Random) -> Item:
    category = rng.choice(tuple(OBJECTS))
    others = [c for c in OBJECTS if c != category]
    counted = rng.sample(OBJECTS[category], rng.randint(2, 4))
    distractor = rng.choice(OBJECTS[rng.choice(others)])
    parts = []
    total = 0
    for noun in counted:
        n = rng.randint(1, 3)
        total += n
        parts.append(_one(noun) if n == 1 else f"{NUMBERS[n]} {_plural(noun)}")
    parts.insert(rng.randint(0, len(parts)), _one(distractor))
    listing = ", ".join(parts[:-1]) + f", and {parts[-1]}"
    wrong = [str(total + d) for d in (-2, -1, 1, 2, 3) if total + d > 0]
    choices, target = _options(rng, str(total), wrong, 4)
    return _item(f"I have {listing}. How many {category} do I have?\nAnswer:", str(total),
                 choices, target)


# -- date arithmetic -------------------------------------------------------------------------

def _fmt(day: dt.date) -> str:
    return day.strftime("%m/%d/%Y")


def date_arithmetic(rng: random.Random) -> Item:
    today = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 40))
    days = rng.choice((1, 2, 3, 7, 10, 14, 30)) * rng.choice((1, -1))
    answer_day = today + dt.timedelta(days=days)
    count = f"{abs(days)} day{'s' if abs(days) > 1 else ''}"
    when = f"{count} after" if days > 0 else f"{count} before"
    wrong = [_fmt(answer_day + dt.timedelta(days=d)) for d in (-1, 1, -7, 7)]
    wrong.append(_fmt(today - dt.timedelta(days=days)))
    wrong.append(_fmt(answer_day.replace(year=answer_day.year + 1)
                      if (answer_day.month, answer_day.day) != (2, 29) else
                      answer_day + dt.timedelta(days=365)))
    choices, target = _options(rng, _fmt(answer_day), wrong, 4)
    return _item(f"Today is {_fmt(today)}. What is the date {when} today in MM/DD/YYYY?\n"
                 "Answer:", _fmt(answer_day), choices, target)


TASKS: dict[str, SuiteTask] = {t.name: t for t in (
    SuiteTask(f"{PREFIX}boolean_expressions", 2,
              "evaluate a nested expression of True, False, not, and, or", boolean_expressions),
    SuiteTask(f"{PREFIX}multistep_arithmetic", 4,
              "compute a two-level expression of + - * over integers in [-9, 9]",
              multistep_arithmetic),
    SuiteTask(f"{PREFIX}word_sorting", 4, "pick the alphabetical order of five words",
              word_sorting),
    SuiteTask(f"{PREFIX}dyck_languages", 4,
              "close the open brackets of a ( [ { < sequence, innermost first", dyck_languages),
    SuiteTask(f"{PREFIX}object_counting", 4,
              "count the objects of one category in a list with one distractor",
              object_counting),
    SuiteTask(f"{PREFIX}date_arithmetic", 4,
              "the date some days before or after a given date", date_arithmetic),
)}
"""The shipped suite, by lm-eval task name."""


def generate(task: str, n: int = DEFAULT_ITEMS, seed: int = SUITE_SEED) -> list[Item]:
    """`n` items of `task`, the same for the same (task, n, seed, SUITE_VERSION)."""
    rng = random.Random(f"{seed}:{task}:{SUITE_VERSION}")
    return [TASKS[task].generate(rng) for _ in range(n)]


def task_config(task: str, data_file: Path, cache_dir: Path | None = None) -> str:
    """The lm-eval task YAML over `data_file` (JSON written as YAML: every JSON is YAML)."""
    kwargs: dict[str, Any] = {"data_files": {"test": str(data_file)}}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    config = {
        "task": task, "dataset_path": "json", "dataset_kwargs": kwargs, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{input}}",
        "doc_to_choice": "choices", "doc_to_target": "target",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": float(SUITE_VERSION)},
    }
    return json.dumps(config, indent=1) + "\n"


def write(out_dir: Path, tasks: Sequence[str] = tuple(TASKS), n: int = DEFAULT_ITEMS,
          seed: int = SUITE_SEED) -> Path:
    """Each task's JSONL and lm-eval YAML under `out_dir` (lm-eval's `include_path`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        data = out_dir / f"{task}.jsonl"
        data.write_text("".join(json.dumps(item, sort_keys=True) + "\n"
                                for item in generate(task, n, seed)), encoding="utf-8")
        (out_dir / f"{task}.yaml").write_text(task_config(task, data, out_dir / "hf_cache"),
                                              encoding="utf-8")
    return out_dir
