"""The pretraining token stream: shipped text, user text / jsonl / parquet, windows."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest

from runners.data import textstream
from runners.data.textstream import WindowPlan
from runners.errors import BadInput
from runners.models.tokenizer import ByteTokenizer


def test_shipped_stream_trains_on_train_txt_and_holds_out_eval_txt() -> None:
    text = textstream.load(None, need_tokens=10, eval_tokens=300)
    assert text.source == "shipped:train.txt" and not text.truncated
    assert len(text.train) > 10_000 and len(text.heldout) == 300
    assert max(text.train) < 256  # plain bytes: no specials in the shipped text
    words = ByteTokenizer().decode(list(text.train)).split()
    assert len(words) > 2000 and "the" in words


def test_plain_text_dataset_holds_out_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("abcdefghij" * 50)
    text = textstream.load(str(path), need_tokens=1000, eval_tokens=20)
    assert (len(text.train), len(text.heldout), text.documents) == (480, 20, 1)
    assert bytes(list(text.heldout)) == b"abcdefghij" * 2
    small = textstream.load(str(path), need_tokens=1000, eval_tokens=400)
    assert len(small.heldout) == 50  # at most a tenth of the stream


def test_reading_stops_at_the_token_budget(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 10_000)
    text = textstream.load(str(path), need_tokens=100, eval_tokens=10)
    assert text.truncated and len(text.train) + len(text.heldout) == 110


def test_jsonl_records_are_documents_joined_by_eos(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"id": 1, "text": "one " * 20}, {"body": "two " * 20}, "three " * 20]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    text = textstream.load(str(path), need_tokens=10_000, eval_tokens=0)
    eos = ByteTokenizer.eos_token_id
    assert text.documents == 3 and list(text.train).count(eos) == 2
    assert bytes(b for b in text.train if b != eos).decode() == "".join(
        r if isinstance(r, str) else next(iter(v for v in r.values() if isinstance(v, str)))
        for r in rows)


def test_parquet_text_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["alpha " * 10, "beta " * 10,
                                                       "gamma " * 10]}), path)
    text = textstream.load(str(path), need_tokens=10_000, eval_tokens=0)
    assert text.documents == 3
    assert bytes(b for b in text.train if b < 256).decode().startswith("alpha alpha")


@pytest.mark.parametrize(("name", "content", "match"), [
    ("missing.txt", None, "not a readable file"),
    ("short.txt", b"tiny", "too short"),
    ("bad.jsonl", b'{"text": "ok"}\n{oops\n', "line 2 is not JSON"),
    ("nums.jsonl", b'{"n": 1}\n', "no text field"),
    ("latin.txt", "caf\xe9 ".encode("latin-1") * 40, "not UTF-8"),
    ("broken.parquet", b"not parquet at all", "not a readable parquet"),
])
def test_bad_datasets(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput, match=match):
        textstream.load(str(path), need_tokens=1000, eval_tokens=10)


def test_window_plan_is_seeded_contiguous_and_wraps() -> None:
    plan = WindowPlan(100, batch_size=3, seq_len=8, seed=1)
    again = WindowPlan(100, batch_size=3, seq_len=8, seed=1)
    assert plan.starts(0) == again.starts(0) and plan.starts(5) == again.starts(5)
    first = plan.starts(0)
    assert [(b - a) % 100 for a, b in zip(first, first[1:], strict=False)] == [8, 8]
    assert (plan.starts(1)[0] - first[-1]) % 100 == 8  # the next step continues the stream
    ids = array("H", range(100))
    start = 96
    assert plan.window(ids, start) == [96, 97, 98, 99, 0, 1, 2, 3, 4]
    assert plan.epochs(25) == pytest.approx(6.0)


def test_pydoc_is_a_real_corpus_on_every_machine_with_whole_topics_held_out() -> None:
    import platform
    from pydoc_data import topics

    tok = ByteTokenizer()
    text = textstream.load("pydoc", need_tokens=10**6, eval_tokens=16384, tokenizer=tok)
    names = sorted(topics.topics)
    sizes = [len(tok.encode(topics.topics[n])) + 1 for n in names]  # + EOS each
    assert text.source == f"builtin:pydoc (Python {platform.python_version()})"
    # every topic is in exactly one part, training first, in name order, none cut
    assert len(text.train) + len(text.heldout) == sum(sizes)
    held = len(names) - text.documents
    assert held >= 1 and sum(sizes[-held:]) == len(text.heldout) >= 16384
    assert sum(sizes[-held + 1:]) < 16384 if held > 1 else True  # the fewest topics that do
    assert list(text.heldout[:20]) == tok.encode(topics.topics[names[-held]])[:20]
    assert text.train.count(tok.eos_token_id) == text.documents
    # far larger than the shipped text a 0.5B run of 8 x 1024 x 28 tokens would repeat
    assert len(text.train) > 20 * len(textstream.load(None, need_tokens=1, eval_tokens=1).train)
    textstream.check_head("pydoc")  # built in: nothing to read ahead
