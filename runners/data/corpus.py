"""The text a runner reads: the shipped eval text or a user file, split into a prompt pool
and a held-out slice, and prompts drawn from the pool deterministically by seed.

Pure Python (no torch), so its rules are cheap to test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import efficientllm_data

from runners.data import datafile
from runners.errors import BadInput
from runners.models.tokenizer import ByteTokenizer

SHIPPED_TEXT = "eval.txt"
MIN_POOL_TOKENS = 64
"""A dataset shorter than this (after the held-out slice) is rejected as bad input."""
MAX_DATASET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Corpus:
    """Token ids of one text, split into a prompt pool and a held-out evaluation slice."""

    source: str
    """`shipped:eval.txt` or the user file's absolute path."""
    pool: tuple[int, ...]
    """Ids prompts are drawn from."""
    heldout: tuple[int, ...]
    """The last ids of the text, never used in prompts: the perplexity slice."""


def read_text(dataset: str | None) -> tuple[str, str]:
    """(source label, text) of the shipped text or a user's UTF-8 text file."""
    if dataset is None:
        return f"shipped:{SHIPPED_TEXT}", efficientllm_data.read_text(SHIPPED_TEXT)
    path = Path(dataset).expanduser()
    try:
        if not path.is_file():
            raise BadInput(f"dataset {dataset!r} is not a readable file")
        if path.stat().st_size > MAX_DATASET_BYTES:
            raise BadInput(f"dataset {dataset!r} is larger than "
                           f"{MAX_DATASET_BYTES // 2**20} MiB; pass a smaller text file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"dataset {dataset!r} is not UTF-8 text") from None
    except OSError as e:
        raise BadInput(f"cannot read dataset {dataset!r}: {e.strerror or e}") from None
    return str(path.resolve()), text


def check_head(dataset: str) -> None:
    """The launcher's cheap look before a run starts: a readable file of at most
    MAX_DATASET_BYTES that starts as UTF-8 text; BadInput names the line of a bad byte."""
    datafile.check_text(datafile.existing(dataset, MAX_DATASET_BYTES), dataset)


def load(dataset: str | None, heldout_tokens: int,
         tokenizer: ByteTokenizer | None = None) -> Corpus:
    """Tokenize the text and hold out its last `heldout_tokens` ids (at most a quarter)."""
    tokenizer = tokenizer or ByteTokenizer()
    source, text = read_text(dataset)
    ids = tokenizer.encode(text)
    held = min(heldout_tokens, len(ids) // 4)
    pool = ids[: len(ids) - held]
    if len(pool) < MIN_POOL_TOKENS:
        raise BadInput(f"dataset {source!r} is too short: {len(ids)} tokens, need at least "
                       f"{MIN_POOL_TOKENS + MIN_POOL_TOKENS // 3}")
    return Corpus(source=source, pool=tuple(pool), heldout=tuple(ids[len(pool):]))


class PromptSampler:
    """Windows of exactly `seq_len` ids from the pool at seeded random offsets.

    A window that runs past the end of the pool wraps to its start, so any `seq_len`
    works with any text. The same seed gives the same prompts on every machine.
    """

    def __init__(self, pool: tuple[int, ...], seq_len: int, seed: int) -> None:
        if not pool:
            raise ValueError("empty prompt pool")
        self.pool = pool
        self.seq_len = seq_len
        self._rng = random.Random(seed)

    def window(self) -> list[int]:
        n = len(self.pool)
        start = self._rng.randrange(n)
        out: list[int] = []
        while len(out) < self.seq_len:
            take = min(self.seq_len - len(out), n - start)
            out.extend(self.pool[start:start + take])
            start = 0
        return out

    def batch(self, batch_size: int) -> list[list[int]]:
        return [self.window() for _ in range(batch_size)]
