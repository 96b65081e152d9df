"""The token stream pretraining reads: shipped text or a user's text / jsonl / parquet file,
tokenized by the byte tokenizer, with a held-out slice for perplexity and a seeded plan of
which windows each step trains on.

Why bytes: the tokenizer needs no download and its ids (0-259) are valid in every preset's
vocabulary, so a 0.5B shape keeps its 151936-entry embedding and LM head (whose cost does not
depend on which ids arrive) while reading the same stream as `tiny`. Perplexities are per
byte-token: they compare variants of one preset, not the paper's BPE perplexities.

Pure Python (no torch): the runner turns ids into a device tensor once.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import efficientllm_data

from runners.data import datafile
from runners.errors import BadInput
from runners.models.tokenizer import ByteTokenizer

SHIPPED_TRAIN = "train.txt"
SHIPPED_EVAL = "eval.txt"
PYDOC = "pydoc"  # one of runners.protocol.BUILTIN_DATASETS
"""`--dataset pydoc`: the Python documentation's topic texts that every CPython ships
(`pydoc_data.topics`, the language reference in English prose: 79 topics, about 466 KB under
Python 3.11), a real corpus on every machine, offline. The shipped train.txt is 14 KB, so a
0.5B pretraining run of 8 x 1024 tokens x 28 steps reads it 16 times over and the variants
race to memorise it (a Mamba's training loss fell to 0.27 nats/byte while its held-out
perplexity rose); this corpus is read about half a time by the same run. Topics in sorted
order; the last ones (by name) are held out. Its text differs between Python versions, so the
source names the version."""
TEXT_FIELDS = ("text", "content")
"""Record fields read from jsonl / parquet, in order of preference."""
MAX_STREAM_TOKENS = 1 << 26
"""Most tokens read from a dataset (128 MiB as uint16); longer runs go round it again."""
HELDOUT_SHARE = 0.1
"""Largest share of a user dataset held out for perplexity."""
MIN_TRAIN_TOKENS = 64
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
RECORD_SUFFIXES = (*JSONL_SUFFIXES, ".parquet")
"""Files of many documents (joined by EOS); anything else is one plain UTF-8 text."""


@dataclass(frozen=True, slots=True)
class TokenText:
    """A training stream and the held-out ids that score it."""

    source: str
    """`shipped:train.txt` or the user file's absolute path."""
    train: array
    """Token ids (array of uint16), documents separated by the EOS id."""
    heldout: array
    """Ids never trained on: the shipped eval text, or the tail of a user file."""
    documents: int
    """Records read (1 for a plain text)."""
    truncated: bool
    """True when the file held more than was read (the read stopped at the token budget)."""


def _records(path: Path) -> Iterator[str]:
    """The documents of a user file: jsonl records, parquet rows, or the whole text."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        yield from _plain(path)


def _plain(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(1 << 20):
                yield chunk
    except UnicodeDecodeError:
        raise BadInput(f"dataset {str(path)!r} is not UTF-8 text") from None


def _text_of(record: object, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in TEXT_FIELDS:
            if isinstance(record.get(key), str):
                return record[key]
        for value in record.values():
            if isinstance(value, str):
                return value
    raise BadInput(f"{where} has no text field (looked for {', '.join(TEXT_FIELDS)} "
                   "or any string value)")


def _jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_text(line, path.name, n)
        except UnicodeDecodeError:
            raise BadInput(f"dataset {str(path)!r} is not UTF-8 text") from None


def _jsonl_text(line: str, name: str, n: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{name} line {n} is not JSON: {e.msg}") from None
    return _text_of(record, f"{name} line {n}")


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInput("reading a parquet dataset needs pyarrow, which is not installed") \
            from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise BadInput(f"dataset {str(path)!r} is not a readable parquet file: {e}") from None
    names = [f.name for f in pf.schema_arrow if pa.types.is_string(f.type)
             or pa.types.is_large_string(f.type)]
    column = next((c for c in TEXT_FIELDS if c in names), names[0] if names else None)
    if column is None:
        raise BadInput(f"parquet dataset {path.name} has no string column")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value:
                yield value


def _read(records: Iterator[str], limit: int, tokenizer: ByteTokenizer,
          separate: bool) -> tuple[array, int, bool]:
    """(ids, documents, truncated): documents joined by EOS when `separate`, at most `limit`
    ids. A plain text arrives in pieces of one document, so it counts as one."""
    ids = array("H")
    docs = 0
    truncated = False
    for text in records:
        if len(ids) >= limit:
            truncated = True
            break
        if separate and docs:
            ids.append(tokenizer.eos_token_id)
        # A character is at least one byte: limit - len + 1 characters overshoot if any remain.
        ids.extend(tokenizer.encode(text[: limit - len(ids) + 1]))
        docs += 1
    truncated = truncated or len(ids) > limit
    del ids[limit:]
    return ids, docs if separate else min(docs, 1), truncated


def check_head(dataset: str) -> None:
    """The launcher's cheap look before a run starts: the first datafile.HEAD_LINES records
    of a jsonl file parse and carry text, a parquet file has its magic, any other file starts
    as UTF-8 text; BadInput names the first bad line. `pydoc` (PYDOC) is built in."""
    if dataset == PYDOC:
        return
    path = datafile.existing(dataset)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        datafile.check_parquet(path, dataset)
        return
    if suffix not in JSONL_SUFFIXES:
        datafile.check_text(path, dataset)
        return
    seen = 0
    for n, line in datafile.head_lines(path, dataset):
        _jsonl_text(line, path.name, n)
        seen += 1
    if not seen:
        raise BadInput(f"dataset {dataset!r} has no records")


def load(dataset: str | None, *, need_tokens: int, eval_tokens: int,
         tokenizer: ByteTokenizer | None = None) -> TokenText:
    """The training stream and held-out ids of the shipped text or a user file.

    Reads at most `need_tokens` + held-out ids (capped at MAX_STREAM_TOKENS), so a large
    FineWeb-Edu shard costs only what a run consumes. Shipped: train on train.txt, hold out
    eval.txt. A user file: hold out its last `eval_tokens` ids (at most HELDOUT_SHARE).
    """
    tokenizer = tokenizer or ByteTokenizer()
    if dataset == PYDOC:
        return _pydoc(eval_tokens, tokenizer)
    if dataset is None:
        train = array("H", tokenizer.encode(efficientllm_data.read_text(SHIPPED_TRAIN)))
        eval_ids = array("H", tokenizer.encode(efficientllm_data.read_text(SHIPPED_EVAL))
                         [:eval_tokens])
        return TokenText(f"shipped:{SHIPPED_TRAIN}", train, eval_ids, 1, False)
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise BadInput(f"dataset {dataset!r} is not a readable file")
    limit = min(MAX_STREAM_TOKENS, max(need_tokens, MIN_TRAIN_TOKENS) + eval_tokens)
    try:
        ids, docs, truncated = _read(_records(path), limit, tokenizer,
                                     separate=path.suffix.lower() in RECORD_SUFFIXES)
    except OSError as e:
        raise BadInput(f"cannot read dataset {dataset!r}: {e.strerror or e}") from None
    held = min(eval_tokens, int(len(ids) * HELDOUT_SHARE))
    train = ids[: len(ids) - held]
    if len(train) < MIN_TRAIN_TOKENS:
        raise BadInput(f"dataset {dataset!r} is too short: {len(ids)} tokens, need at least "
                       f"{MIN_TRAIN_TOKENS}")
    return TokenText(str(path.resolve()), train, ids[len(ids) - held:], docs, truncated)


def _pydoc(eval_tokens: int, tokenizer: ByteTokenizer) -> TokenText:
    """PYDOC's topics as documents joined by EOS; held out: whole topics from the end, at
    least `eval_tokens` ids (at most HELDOUT_SHARE of the corpus)."""
    import platform
    from pydoc_data import topics

    docs = [tokenizer.encode(topics.topics[name]) for name in sorted(topics.topics)]
    total = sum(len(d) + 1 for d in docs)
    want = min(eval_tokens, int(total * HELDOUT_SHARE))
    held: list[list[int]] = []
    held_ids = 0
    while docs and held_ids < want:
        held.insert(0, docs.pop())
        held_ids += len(held[0]) + 1
    train, heldout = array("H"), array("H")
    for into, part in ((train, docs), (heldout, held)):
        for doc in part:
            into.extend(doc)
            into.append(tokenizer.eos_token_id)
    return TokenText(f"builtin:{PYDOC} (Python {platform.python_version()})", train, heldout,
                     len(docs), False)


class WindowPlan:
    """Which windows of seq_len + 1 ids each step trains on.

    Step s takes batch_size consecutive windows (each starting seq_len after the last, so
    every id is a target once) from a cursor that starts at a seeded random offset and wraps
    around the stream: a stream shorter than a batch is read round again.
    """

    def __init__(self, n_tokens: int, batch_size: int, seq_len: int, seed: int) -> None:
        if n_tokens < 2:
            raise ValueError("a token stream needs at least 2 ids")
        self.n_tokens = n_tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.offset = random.Random(seed).randrange(n_tokens)

    def starts(self, step: int) -> list[int]:
        first = self.offset + step * self.batch_size * self.seq_len
        return [(first + row * self.seq_len) % self.n_tokens for row in range(self.batch_size)]

    def window(self, ids: array, start: int) -> list[int]:
        """The seq_len + 1 ids at `start`, wrapping at the end (what a batch row holds)."""
        return [ids[(start + i) % self.n_tokens] for i in range(self.seq_len + 1)]

    def epochs(self, steps: int) -> float:
        """Passes over the stream that `steps` steps make."""
        return steps * self.batch_size * self.seq_len / self.n_tokens
