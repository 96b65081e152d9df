"""Cheap looks at a user's dataset file before a run starts: that it is there, its first lines
(jsonl), the head of its text, the magic of a parquet file.

The launcher calls these (through runners.preflight) so a malformed file is refused in
milliseconds rather than after a runner has started; the readers (runners.data.sft,
runners.data.textstream, runners.data.corpus) apply their own record rules to what these return, and
still check the whole file when the run reads it.
"""

from __future__ import annotations

import codecs
import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path

from runners.errors import BadInput

HEAD_LINES = 200
"""Non-blank jsonl lines checked before a run."""
HEAD_BYTES = 1 << 20
"""Bytes of a plain-text file checked before a run."""
MAX_LINE_BYTES = 16 << 20
"""Longest jsonl line the check parses; the check stops at a longer one (the run reads it)."""
PARQUET_MAGIC = b"PAR1"


def existing(dataset: str, max_bytes: int | None = None) -> Path:
    """The path of a non-empty readable file of at most `max_bytes`; BadInput otherwise."""
    path = Path(dataset).expanduser()
    try:
        if not path.is_file():
            raise BadInput(f"dataset {dataset!r} is not a readable file")
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise BadInput(f"cannot read dataset {dataset!r}: {e.strerror or e}") from None
    if size == 0:
        raise BadInput(f"dataset {dataset!r} is empty")
    if max_bytes is not None and size > max_bytes:
        raise BadInput(f"dataset {dataset!r} is larger than {max_bytes // 2**20} MiB")
    return path


def head_lines(path: Path, label: str, limit: int = HEAD_LINES) -> Iterator[tuple[int, str]]:
    """(line number, text) of the first `limit` non-blank lines; BadInput naming a line that
    is not UTF-8 text."""
    seen = 0
    try:
        with open(path, "rb") as f:
            for number in itertools.count(1):
                raw = f.readline(MAX_LINE_BYTES)
                if not raw or (len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n")):
                    return
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInput(f"dataset {label!r}: line {number}: not UTF-8 text") from None
                if not line.strip():
                    continue
                yield number, line
                seen += 1
                if seen >= limit:
                    return
    except OSError as e:
        raise BadInput(f"cannot read dataset {label!r}: {e.strerror or e}") from None


def check_text(path: Path, label: str) -> None:
    """The file's first HEAD_BYTES are UTF-8 text, not only whitespace; BadInput names the
    line of the first bad byte."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            at_end = not f.read(1)
    except OSError as e:
        raise BadInput(f"cannot read dataset {label!r}: {e.strerror or e}") from None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=at_end)
    except UnicodeDecodeError as e:
        line = head[: e.start].count(b"\n") + 1
        raise BadInput(f"dataset {label!r}: line {line}: not UTF-8 text") from None
    if at_end and not text.strip():
        raise BadInput(f"dataset {label!r} has no text (only whitespace)")


def check_parquet(path: Path, label: str) -> None:
    """The file starts with the parquet magic and pyarrow, which reads it, is installed."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(PARQUET_MAGIC))
    except OSError as e:
        raise BadInput(f"cannot read dataset {label!r}: {e.strerror or e}") from None
    if magic != PARQUET_MAGIC:
        raise BadInput(f"dataset {label!r} is not a parquet file (no {PARQUET_MAGIC!r} magic)")
    if importlib.util.find_spec("pyarrow") is None:
        raise BadInput("reading a parquet dataset needs pyarrow, which is not installed")
