"""Tokenizers with one small interface: encode (BOS prepended, as Gemma does), decode, ids.

`ByteTokenizer` serves the embedded tiny model: ids 0/1/2 are pad/eos/bos (Gemma's numbering)
and byte b is id b + 3, so the vocabulary is 259. `HFTokenizer` wraps a checkpoint's
`tokenizer.json` through the `tokenizers` library (no transformers needed), read from any
fsspec URL.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from raysae.storage import read_bytes


class ByteTokenizer:
    """UTF-8 bytes shifted past three specials: pad=0, eos=1, bos=2, byte b -> b + 3."""

    pad_id, eos_id, bos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + 3

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"type": "bytes", "pad_id": self.pad_id, "eos_id": self.eos_id, "bos_id": self.bos_id,
                "offset": self.offset}


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (e.g. Gemma's SentencePiece BPE) via `tokenizers`."""

    def __init__(self, tokenizer_json: str, bos_id: int, eos_id: int, pad_id: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer_json)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_url(cls, url: str, bos_id: int, eos_id: int, pad_id: int) -> "HFTokenizer":
        return cls(read_bytes(url).decode("utf-8"), bos_id, eos_id, pad_id)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        # Specials are added here, not by the file's post-processor, so BOS appears exactly once.
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + list(ids) + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        specials = {self.bos_id, self.eos_id, self.pad_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in specials], skip_special_tokens=True)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to [B, length] int32 plus a bool attention mask (True = real token).

    Longer sequences are truncated to `length`.
    """
    length = length or max(len(s) for s in seqs)
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        tokens[i, : len(s)] = s
        mask[i, : len(s)] = True
    return tokens, mask


def tokenizer_from_json(spec: dict):
    if spec.get("type") != "bytes":
        raise ValueError(f"unknown tokenizer spec {json.dumps(spec)}")
    return ByteTokenizer()
