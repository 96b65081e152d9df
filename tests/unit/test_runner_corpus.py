"""The text runners read: shipped or user text, held-out slice, seeded prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.data import corpus
from runners.errors import BadInput


def test_shipped_text_is_plain_english_of_useful_size() -> None:
    source, text = corpus.read_text(None)
    assert source == "shipped:eval.txt"
    assert 10_000 <= len(text.encode()) <= 30_000
    assert text.isascii()


def test_heldout_slice_is_the_end_and_disjoint() -> None:
    c = corpus.load(None, 512)
    _, text = corpus.read_text(None)
    ids = list(text.encode())
    assert len(c.heldout) == 512
    assert list(c.pool) + list(c.heldout) == ids


def test_prompts_are_exact_and_deterministic() -> None:
    c = corpus.load(None, 512)
    a = corpus.PromptSampler(c.pool, 64, seed=7).batch(4)
    b = corpus.PromptSampler(c.pool, 64, seed=7).batch(4)
    other = corpus.PromptSampler(c.pool, 64, seed=8).batch(4)
    assert a == b != other
    assert all(len(row) == 64 for row in a)


def test_prompts_longer_than_the_pool_wrap() -> None:
    pool = tuple(range(10))
    rows = corpus.PromptSampler(pool, 25, seed=0).batch(3)
    for row in rows:
        assert len(row) == 25
        assert row == [(row[0] + i) % 10 for i in range(25)]


def test_user_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("word " * 100, encoding="utf-8")
    c = corpus.load(str(path), 512)
    assert c.source == str(path.resolve())
    assert len(c.heldout) == 125  # at most a quarter is held out
    assert len(c.pool) == 375


@pytest.mark.parametrize(("content", "match"), [
    (None, "not a readable file"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"short", "too short"),
])
def test_bad_datasets(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "d.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput, match=match):
        corpus.load(str(path), 512)
