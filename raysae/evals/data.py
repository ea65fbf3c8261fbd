"""Eval inputs: fixed-length token rows (BOS first) from texts or token arrays, and their batches.

Token rows are small (2,048 x 1,024 int32 = 8 MiB), so they are built up front; activations are
never held, only one batch at a time. Two ways in:

- `tokens_from_texts(tokenizer, texts, context_length, num_sequences, pack=True)`: tokenize with
  the LM's tokenizer. Packed (default): documents are joined by EOS into one stream and cut into
  rows of BOS + (context_length - 1) tokens, so every row is full. Unpacked: one document per row,
  BOS first, truncated, right-padded (pad positions masked).
- `tokens_from_array(tokens, context_length, ...)`: an int array [N, T] of rows (pad id = padding;
  BOS is put first if missing), or a 1-D stream that is cut like packed text.

Both return `EvalTokens(tokens [N, T] int32, attention_mask [N, T] bool)`.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np


class EvalTokens(NamedTuple):
    tokens: np.ndarray          # int32 [N, T]
    attention_mask: np.ndarray  # bool [N, T], False at padding

    @property
    def num_sequences(self) -> int:
        return int(self.tokens.shape[0])

    def batches(self, batch_size: int) -> Iterator["EvalTokens"]:
        """Consecutive batches; the last one is padded with fully masked rows to `batch_size`
        so every batch has one shape (one compile)."""
        n = self.num_sequences
        for start in range(0, n, batch_size):
            tok = self.tokens[start:start + batch_size]
            am = self.attention_mask[start:start + batch_size]
            short = batch_size - tok.shape[0]
            if short:
                pad_tok = np.zeros((short, tok.shape[1]), np.int32)
                tok = np.concatenate([tok, pad_tok + self.tokens[0, 0]])
                am = np.concatenate([am, np.zeros((short, am.shape[1]), bool)])
            yield EvalTokens(tok, am)


def _pack_stream(stream: np.ndarray, bos_id: int, pad_id: int, context_length: int,
                 num_sequences: int) -> EvalTokens:
    body = context_length - 1
    n = min(num_sequences, -(-len(stream) // body)) if len(stream) else 0
    if n == 0:
        raise ValueError("no tokens to evaluate on (empty texts or token stream)")
    tokens = np.full((n, context_length), pad_id, np.int32)
    mask = np.zeros((n, context_length), bool)
    tokens[:, 0], mask[:, 0] = bos_id, True
    for i in range(n):
        chunk = stream[i * body:(i + 1) * body]
        tokens[i, 1:1 + len(chunk)] = chunk
        mask[i, 1:1 + len(chunk)] = True
    return EvalTokens(tokens, mask)


def tokens_from_texts(tokenizer, texts: Iterable[str], context_length: int, num_sequences: int,
                      pack: bool = True) -> EvalTokens:
    """Rows of token ids from raw texts with the LM's tokenizer.

    Args:
        tokenizer: the LM's tokenizer.
        texts: documents, read lazily until there are enough tokens.
        context_length: tokens per row, BOS first.
        num_sequences: rows wanted.
        pack: join documents by EOS and cut full rows (else one document per row, padded).
    Returns:
        `EvalTokens` (tokens and attention mask).
    """
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: pass token arrays instead of texts")
    bos, pad = tokenizer.bos_id, tokenizer.pad_id
    if pack:
        parts, total = [], 0
        need = num_sequences * (context_length - 1)
        for text in texts:  # stop reading once there is enough
            ids = tokenizer.encode(text, add_bos=False, add_eos=True)
            parts.append(np.asarray(ids, np.int32))
            total += len(ids)
            if total >= need:
                break
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return _pack_stream(stream[:need], bos, pad, context_length, num_sequences)
    rows = []
    for text in texts:
        if len(rows) == num_sequences:
            break
        rows.append(tokenizer.encode(text, add_bos=True)[:context_length])
    if not rows:
        raise ValueError("no texts to evaluate on")
    tokens = np.full((len(rows), context_length), pad, np.int32)
    mask = np.zeros((len(rows), context_length), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], mask[i, :len(r)] = r, True
    return EvalTokens(tokens, mask)


def tokens_from_array(tokens, context_length: int, num_sequences: int, *, bos_id: int,
                      pad_id: int) -> EvalTokens:
    """Rows from an int array: [N, T] rows (cut/padded to context_length) or a 1-D stream."""
    arr = np.asarray(tokens)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token array has dtype {arr.dtype}, expected integers")
    if arr.ndim == 1:
        return _pack_stream(arr.astype(np.int32), bos_id, pad_id, context_length, num_sequences)
    if arr.ndim != 2:
        raise ValueError(f"token array must be [N, T] or a 1-D stream, got shape {arr.shape}")
    arr = arr[:num_sequences].astype(np.int32)
    if arr.shape[0] == 0:
        raise ValueError("token array has no rows")
    # Gemma (and the SAEs) always saw BOS first: prepend it to the rows that lack it, and
    # only to those (a second BOS would change the context and the losses).
    out = np.full((arr.shape[0], context_length), pad_id, np.int32)
    for i, row in enumerate(arr):
        if row[0] != bos_id:
            row = np.concatenate([[bos_id], row]).astype(np.int32)
        row = row[:context_length]
        out[i, :len(row)] = row
    return EvalTokens(out, out != pad_id)
