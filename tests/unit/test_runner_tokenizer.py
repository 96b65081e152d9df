"""The byte tokenizer: round trips, specials and batch padding."""

from __future__ import annotations

import pytest

from runners.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


@pytest.mark.parametrize("text", ["", "hello world", "caf\u00e9 \u2603 \U0001f600", "a\nb\tc\x00"])
def test_round_trip(text: str) -> None:
    ids = TOK.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert TOK.decode(ids) == text


def test_ids_are_utf8_bytes() -> None:
    assert TOK.encode("A\u00e9") == [65, 0xC3, 0xA9]


def test_specials_frame_and_are_skipped() -> None:
    ids = TOK.encode("hi", add_bos=True, add_eos=True)
    assert ids == [256, 104, 105, 257]
    assert TOK.decode(ids) == "hi"
    assert TOK.decode(ids, skip_special=False) == "<bos>hi<eos>"


def test_vocab_matches_the_tiny_card() -> None:
    from runners.models.catalog import model_card

    card = model_card("tiny")
    assert TOK.vocab_size == card.vocab_size == 260
    assert (card.bos_token_id, card.eos_token_id, card.pad_token_id) == (
        TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id)


def test_decode_rejects_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="outside"):
        TOK.decode([65, 300])


def test_broken_utf8_decodes_with_replacement() -> None:
    assert TOK.decode([0xC3]) == "\ufffd"


def test_left_padding() -> None:
    batch = TOK.pad([[1, 2, 3], [4]])
    assert batch.input_ids == [[1, 2, 3], [258, 258, 4]]
    assert batch.attention_mask == [[1, 1, 1], [0, 0, 1]]


def test_right_padding_to_a_length() -> None:
    batch = TOK.pad([[1], [2, 3]], side="right", length=4)
    assert batch.input_ids == [[1, 258, 258, 258], [2, 3, 258, 258]]
    assert batch.attention_mask == [[1, 0, 0, 0], [1, 1, 0, 0]]


def test_padding_shorter_than_the_longest_is_an_error() -> None:
    with pytest.raises(ValueError):
        TOK.pad([[1, 2, 3]], length=2)


def test_encode_batch() -> None:
    batch = TOK.encode_batch(["ab", "c"], add_bos=True)
    assert batch.input_ids == [[256, 97, 98], [258, 256, 99]]
    assert TOK.pad([]).input_ids == []
