"""A byte-level tokenizer that needs no download: ids 0-255 are bytes, then a few specials.

Used by `tiny` and by every random-weight shape (their vocabularies are larger, so byte ids
are valid in all of them). Pure Python, no torch: callers turn the lists into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Batch:
    """Token ids padded to one length, with the mask that tells real tokens from padding."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    """1 for a real token, 0 for padding."""


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255; bos=256, eos=257, pad=258, 259 reserved (vocab 260)."""

    BYTES = 256
    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    unk_token_id = 259
    """Reserved; never produced by `encode`."""
    vocab_size = 260
    special_ids = frozenset((256, 257, 258, 259))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of the UTF-8 bytes of `text`, optionally framed by bos/eos."""
        ids = list(text.encode("utf-8"))
        if add_bos:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of byte ids; specials dropped (or shown as `<bos>`...); bad UTF-8 -> U+FFFD."""
        out = bytearray()
        parts: list[str] = []
        for i in ids:
            i = int(i)
            if 0 <= i < self.BYTES:
                out.append(i)
                continue
            if i not in self.special_ids:
                raise ValueError(f"token id {i} is outside the byte vocabulary (0-259)")
            if not skip_special:
                parts.append(out.decode("utf-8", errors="replace"))
                out.clear()
                parts.append(_SPECIAL_NAMES[i])
        parts.append(out.decode("utf-8", errors="replace"))
        return "".join(parts)

    def pad(self, seqs: Sequence[Sequence[int]], *, side: Literal["left", "right"] = "left",
            length: int | None = None) -> Batch:
        """Pad `seqs` to `length` (default: the longest) with pad ids on `side`.

        Left padding is what decoding wants: every row's last token is real, so the next
        token of each row comes from the same position.
        """
        if not seqs:
            return Batch([], [])
        longest = max(len(s) for s in seqs)
        target = longest if length is None else length
        if target < longest:
            raise ValueError(f"cannot pad to {target}: a sequence has {longest} tokens")
        ids: list[list[int]] = []
        mask: list[list[int]] = []
        for s in seqs:
            fill = target - len(s)
            row, ones = list(s), [1] * len(s)
            if side == "left":
                ids.append([self.pad_token_id] * fill + row)
                mask.append([0] * fill + ones)
            else:
                ids.append(row + [self.pad_token_id] * fill)
                mask.append(ones + [0] * fill)
        return Batch(ids, mask)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False,
                     side: Literal["left", "right"] = "left") -> Batch:
        """Encode several texts and pad them to one length."""
        return self.pad([self.encode(t, add_bos=add_bos) for t in texts], side=side)


_SPECIAL_NAMES = {256: "<bos>", 257: "<eos>", 258: "<pad>", 259: "<unk>"}
