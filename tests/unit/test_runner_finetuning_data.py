"""runners.data.sft: reading, checking, templating, tokenising and packing instruction data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.data import sft
from runners.errors import BadInput
from runners.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
ENC = sft.encoder_for(TOK)


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_shipped_set_is_prompt_response_pairs() -> None:
    source, examples = sft.read_examples(None)
    assert source == "shipped:sft.jsonl"
    assert 100 <= len(examples) <= 300
    for e in examples:
        (prompt, p_trained), (response, r_trained) = e.segments
        assert prompt.startswith(sft.PROMPT_HEADER) and not p_trained
        assert r_trained and response.strip()
    prompts = [e.segments[0][0] for e in examples]
    assert len(set(prompts)) == len(prompts)


def test_split_holds_out_the_last_tenth() -> None:
    data = sft.load(None)
    total = len(data.train) + len(data.heldout)
    assert len(data.heldout) == round(total * 0.1)
    assert data.train[-1].where == f"line {len(data.train)}"
    one = sft.Dataset("x", (), ())
    assert one.train == ()


def test_three_record_shapes(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [
        json.dumps({"prompt": "Hi?", "response": "Hello."}),
        "",
        json.dumps({"text": "plain text"}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
    ])
    _, (pr, text, chat) = sft.read_examples(path)
    assert pr.segments == ((sft.PROMPT_HEADER + "Hi?" + sft.RESPONSE_HEADER, False),
                           ("Hello.", True))
    assert text.segments == (("plain text", True),) and text.where == "line 3"
    assert [trained for _, trained in chat.segments] == [False, False, False, False, False,
                                                         True]
    assert chat.where == "line 4"


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "a", "response": ', "line 2: not valid JSON"),
    ('["a", "b"]', "line 2: expected a JSON object"),
    ('{"prompt": "a", "response": 3}', "line 2: field 'response' must be a string"),
    ('{"question": "a"}', "line 2: no usable fields (found: question)"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: 'messages' has no"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: messages[0].role"),
    ('{"text": ""}', "line 2: field 'text' must be a non-empty string"),
])
def test_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"text": "fine"}), line])
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        sft.read_examples(path)


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(BadInput, match="line 2: not UTF-8"):
        sft.read_examples(str(path))


def test_parquet_rows_and_bad_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", "y"]}), good)
    _, examples = sft.read_examples(str(good))
    assert [e.where for e in examples] == ["row 1", "row 2"]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", None]}), bad)
    with pytest.raises(BadInput, match="row 2: field 'response' must be a string"):
        sft.read_examples(str(bad))
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(BadInput, match="not a readable parquet file"):
        sft.read_examples(str(junk))


def test_unknown_format_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown format '.csv'"):
        sft.read_examples(_write(tmp_path / "d.csv", ["a,b"]))
    with pytest.raises(BadInput, match="not a readable file"):
        sft.read_examples(str(tmp_path / "missing.jsonl"))
    with pytest.raises(BadInput, match="has no examples"):
        sft.read_examples(_write(tmp_path / "empty.jsonl", [""]))


def test_tokenize_masks_the_prompt_and_trains_the_eos() -> None:
    example = sft.Example(((("ab", False)), ("cd", True)), "line 1")
    tok = sft.tokenize(example, ENC, TOK.eos_token_id)
    assert tok.ids == (97, 98, 99, 100, TOK.eos_token_id)
    assert tok.labels == (-100, -100, 99, 100, TOK.eos_token_id)
    context_last = sft.tokenize(sft.Example((("x", True), ("y", False)), "l"), ENC, 7)
    assert context_last.labels == (120, -100, -100)


def test_packing_cuts_exact_rows_and_wraps_deterministically() -> None:
    items = [sft.Tokenized(tuple(range(i * 10, i * 10 + 5)), tuple(range(5))) for i in range(3)]
    rows = sft.packed_rows(items, seq_len=4, count=6, seed=1)
    assert len(rows) == 6 and all(len(ids) == len(lab) == 4 for ids, lab in rows)
    assert rows == sft.packed_rows(items, seq_len=4, count=6, seed=1)
    stream = [t for ids, _ in rows for t in ids]
    first_epoch = sorted(stream[:15])
    assert first_epoch == sorted(t for it in items for t in it.ids)  # every token once
    once = sft.packed_rows(items, seq_len=4, count=100, seed=1, wrap=False)
    assert [len(ids) for ids, _ in once] == [4, 4, 4, 3]


def test_padded_batches_mask_padding() -> None:
    items = [sft.Tokenized((1, 2, 3), (-100, 2, 3)), sft.Tokenized((4, 5), (4, 5))]
    rows = sft.padded_rows(items, seq_len=8, count=2, seed=0)
    (batch,) = sft.batches(rows, 2, pad_id=0, packed=False)
    assert batch.attention_mask is not None
    widths = {len(r) for r in batch.input_ids}
    assert widths == {3}
    for ids, labels, mask in zip(batch.input_ids, batch.labels, batch.attention_mask,
                                 strict=True):
        for i, m, lab in zip(ids, mask, labels, strict=True):
            assert (m == 0) == (i == 0 and lab == -100)
    packed = sft.batches([([1, 2], [1, 2]), ([3, 4], [3, 4]), ([5, 6], [5, 6])], 2, 0,
                         packed=True)
    assert [b.attention_mask for b in packed] == [None, None]
    assert [len(b.input_ids) for b in packed] == [2, 1]
