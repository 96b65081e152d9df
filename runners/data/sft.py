"""Instruction data for fine-tuning: read (shipped set or a user's jsonl/parquet), check line
by line, render into one plain template, tokenise with a loss mask, and pack into batches.

Pure Python (no torch): the family turns the lists into tensors. Three record shapes are
accepted, one a line (jsonl) or row (parquet):

- `{"prompt": "...", "response": "..."}`: the response (and the end-of-sequence token) is
  trained, the prompt is context only;
- `{"text": "..."}`: every token is trained (continued pretraining on raw text);
- `{"messages": [{"role": "system|user|assistant|tool", "content": "..."}, ...]}`: the
  assistant turns are trained, the rest is context.

Every model here is rendered through one plain-text template (`### Prompt:` /
`### Response:` headers), so runs of different models see the same text. A malformed file is
a `BadInput` naming its line (row for parquet), never a traceback.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import efficientllm_data

from runners.data import datafile
from runners.errors import BadInput

SHIPPED = "sft.jsonl"
IGNORE_INDEX = -100
MAX_DATASET_BYTES = 512 * 1024 * 1024
ROLES = ("system", "user", "assistant", "tool")
PROMPT_HEADER = "### Prompt:\n"
RESPONSE_HEADER = "\n\n### Response:\n"
ROLE_HEADERS = {"system": "### System:\n", "user": "### Prompt:\n",
                "assistant": "### Response:\n", "tool": "### Tool:\n"}
TURN_SEPARATOR = "\n\n"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SHAPES = ('{"prompt": str, "response": str}', '{"text": str}',
          '{"messages": [{"role": ..., "content": str}, ...]}')


@dataclass(frozen=True, slots=True)
class Example:
    """One record rendered as text pieces, each marked trained or context."""

    segments: tuple[tuple[str, bool], ...]
    """(text, trained) in order; trained text is scored by the loss."""
    where: str
    """Where it came from, for messages: `line 12` or `row 12`."""


@dataclass(frozen=True, slots=True)
class Tokenized:
    """Token ids of one example with its labels (IGNORE_INDEX where not trained)."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Examples of one source, split into training and held-out examples."""

    source: str
    """`shipped:sft.jsonl` or the user file's absolute path."""
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """One micro-batch as nested lists: every row the same length."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    attention_mask: list[list[int]] | None
    """None when packed (no padding at all), else 1 for real tokens and 0 for padding."""


# -- reading --------------------------------------------------------------------------------

def _example(record: Any, where: str) -> Example:
    """Check one record and render it; BadInput naming `where` when malformed."""
    if not isinstance(record, Mapping):
        raise BadInput(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record and record["messages"] is not None:
        return Example(_messages(record["messages"], where), where)
    if "prompt" in record or "response" in record:
        prompt, response = record.get("prompt"), record.get("response")
        for name, value in (("prompt", prompt), ("response", response)):
            if not isinstance(value, str):
                raise BadInput(f"{where}: field {name!r} must be a string, got "
                               f"{type(value).__name__}")
        assert isinstance(prompt, str) and isinstance(response, str)  # checked just above
        if not response.strip():
            raise BadInput(f"{where}: field 'response' is empty")
        return Example(((PROMPT_HEADER + prompt + RESPONSE_HEADER, False), (response, True)),
                       where)
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{where}: field 'text' must be a non-empty string")
        return Example(((text, True),), where)
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise BadInput(f"{where}: no usable fields (found: {keys}); expected one of "
                   f"{' | '.join(SHAPES)}")


def _messages(messages: Any, where: str) -> tuple[tuple[str, bool], ...]:
    if not isinstance(messages, list) or not messages:
        raise BadInput(f"{where}: 'messages' must be a non-empty list")
    out: list[tuple[str, bool]] = []
    trained = False
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadInput(f"{where}: messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadInput(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, "
                           f"got {role!r}")
        if not isinstance(content, str):
            raise BadInput(f"{where}: messages[{i}].content must be a string")
        prefix = (TURN_SEPARATOR if i else "") + ROLE_HEADERS[role]
        out.append((prefix, False))
        out.append((content, role == "assistant"))
        trained = trained or (role == "assistant" and bool(content.strip()))
    if not trained:
        raise BadInput(f"{where}: 'messages' has no non-empty assistant turn to train on")
    return tuple(out)


def _read_jsonl(path: Path, label: str) -> list[Example]:
    try:
        if path.stat().st_size > MAX_DATASET_BYTES:
            raise BadInput(f"dataset {label!r} is larger than {MAX_DATASET_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise BadInput(f"dataset {label!r}: line {line}: not UTF-8 text") from None
    except OSError as e:
        raise BadInput(f"cannot read dataset {label!r}: {e.strerror or e}") from None
    return parse_jsonl(text, label)


def parse_jsonl(text: str, label: str) -> list[Example]:
    """Examples of jsonl `text` (blank lines skipped); BadInput names the first bad line."""
    return [_line_example(line, number, label)
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _line_example(line: str, number: int, label: str) -> Example:
    where = f"dataset {label!r}: line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    return Example(_example(record, where).segments, f"line {number}")


def _read_parquet(path: Path, label: str) -> list[Example]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError:
        raise BadInput("reading parquet needs pyarrow, which is not installed") from None
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise BadInput(f"dataset {label!r} is not a readable parquet file: "
                       f"{type(e).__name__}: {e}") from None
    out = []
    for number, record in enumerate(table.to_pylist(), start=1):
        example = _example(record, f"dataset {label!r}: row {number}")
        out.append(Example(example.segments, f"row {number}"))
    return out


def read_examples(dataset: str | None) -> tuple[str, list[Example]]:
    """(source label, examples) of the shipped set (None) or a user's .jsonl/.parquet file."""
    if dataset is None:
        return f"shipped:{SHIPPED}", parse_jsonl(efficientllm_data.read_text(SHIPPED), SHIPPED)
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise BadInput(f"dataset {dataset!r} is not a readable file")
    suffix = _suffix(path, dataset)
    examples = (_read_jsonl if suffix in JSONL_SUFFIXES else _read_parquet)(path, dataset)
    if not examples:
        raise BadInput(f"dataset {dataset!r} has no examples")
    return str(path.resolve()), examples


def _suffix(path: Path, dataset: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES):
        raise BadInput(f"dataset {dataset!r}: unknown format {suffix or '(no extension)'!r}; "
                       "use .jsonl (one JSON object a line) or .parquet")
    return suffix


def check_head(dataset: str) -> None:
    """The launcher's cheap look before a run starts: a known format, not too large, and
    the first datafile.HEAD_LINES records well formed; BadInput names the first bad line."""
    path = datafile.existing(dataset, MAX_DATASET_BYTES)
    if _suffix(path, dataset) in PARQUET_SUFFIXES:
        datafile.check_parquet(path, dataset)
        return
    seen = 0
    for number, line in datafile.head_lines(path, dataset):
        _line_example(line, number, dataset)
        seen += 1
    if not seen:
        raise BadInput(f"dataset {dataset!r} has no examples")


def load(dataset: str | None, heldout_fraction: float = 0.1) -> Dataset:
    """Read and split: the last `heldout_fraction` of the examples (at least one when there
    are two or more) are held out for the evaluation loss and never trained on."""
    source, examples = read_examples(dataset)
    held = 0
    if len(examples) >= 2 and heldout_fraction > 0:
        held = min(len(examples) - 1, max(1, round(len(examples) * heldout_fraction)))
    cut = len(examples) - held
    return Dataset(source=source, train=tuple(examples[:cut]), heldout=tuple(examples[cut:]))


# -- tokenising and batching ----------------------------------------------------------------

Encoder = Callable[[str], list[int]]


def encoder_for(tokenizer: Any) -> Encoder:
    """A text -> ids function, no special tokens added (the template and the EOS id frame
    each example): the runners' tokenizers (ByteTokenizer, weights.HFTokenizer) already
    encode that way; a bare transformers tokenizer is told so."""
    if callable(getattr(tokenizer, "convert_tokens_to_ids", None)):  # a transformers one
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    return tokenizer.encode


def tokenize(example: Example, encode: Encoder, eos_id: int | None) -> Tokenized:
    """Ids and labels of one example; the EOS closes it and is trained when its last
    segment is."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in example.segments:
        piece = encode(text)
        ids.extend(piece)
        labels.extend(piece if trained else [IGNORE_INDEX] * len(piece))
    if eos_id is not None:
        ids.append(eos_id)
        labels.append(eos_id if example.segments[-1][1] else IGNORE_INDEX)
    return Tokenized(tuple(ids), tuple(labels))


def _epochs(items: Sequence[Tokenized], seed: int, wrap: bool) -> Iterator[Tokenized]:
    """Items in a seeded order, reshuffled every epoch; one epoch only unless `wrap`."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in order:
            yield items[i]
        if not wrap:
            return


def scores(labels: Sequence[int]) -> bool:
    """Whether a row has a token the next-token loss scores (labels past the first)."""
    return any(x != IGNORE_INDEX for x in labels[1:])


def _trainable(items: Sequence[Tokenized]) -> list[Tokenized]:
    return [t for t in items if t.ids and any(x != IGNORE_INDEX for x in t.labels)]


def packed_rows(items: Sequence[Tokenized], seq_len: int, count: int, seed: int, *,
                wrap: bool = True) -> list[tuple[list[int], list[int]]]:
    """`count` rows of exactly `seq_len` tokens cut from the examples laid end to end (each
    closed by its EOS), the examples in seeded order. Rows may start mid-example and attend
    across example boundaries, as packed SFT does; a row with nothing to score (all prompt,
    when prompts are longer than rows) is dropped. With `wrap` the stream restarts (in a
    new order) when it runs out; without, fewer rows come back (the last one shorter)."""
    usable = _trainable(items)
    if not usable:
        return []
    rows: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    budget = max(64, 8 * count) * (1 + sum(len(t.ids) for t in usable) // seq_len)
    for item in _epochs(usable, seed, wrap):
        ids.extend(item.ids)
        labels.extend(item.labels)
        while len(ids) >= seq_len and len(rows) < count and budget > 0:
            budget -= 1
            if scores(labels[:seq_len]):
                rows.append((ids[:seq_len], labels[:seq_len]))
            del ids[:seq_len], labels[:seq_len]
        if len(rows) >= count or budget <= 0:
            return rows
    if ids and len(rows) < count and scores(labels):
        rows.append((ids, labels))
    return rows


def padded_rows(items: Sequence[Tokenized], seq_len: int, count: int, seed: int, *,
                wrap: bool = True) -> list[tuple[list[int], list[int]]]:
    """`count` rows of one example each, cut to `seq_len` tokens (padding happens later);
    an example with nothing to score within its first `seq_len` tokens is skipped."""
    usable = [t for t in _trainable(items) if scores(t.labels[:seq_len])]
    rows: list[tuple[list[int], list[int]]] = []
    if not usable:
        return rows
    for item in _epochs(usable, seed, wrap):
        rows.append((list(item.ids[:seq_len]), list(item.labels[:seq_len])))
        if len(rows) >= count:
            break
    return rows


def batches(rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
            *, packed: bool) -> list[Batch]:
    """Group rows into micro-batches of `batch_size` (a last partial one is kept). Packed
    rows of one length need no mask; otherwise rows are right-padded to the longest in the
    batch with `pad_id`, masked out and given IGNORE_INDEX labels."""
    out: list[Batch] = []
    for start in range(0, len(rows), batch_size):
        group = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in group)
        same = all(len(ids) == width for ids, _ in group)
        if packed and same:
            out.append(Batch([ids for ids, _ in group], [lab for _, lab in group], None))
            continue
        input_ids, labels, mask = [], [], []
        for ids, lab in group:
            fill = width - len(ids)
            input_ids.append(ids + [pad_id] * fill)
            labels.append(lab + [IGNORE_INDEX] * fill)
            mask.append([1] * len(ids) + [0] * fill)
        out.append(Batch(input_ids, labels, mask))
    return out
