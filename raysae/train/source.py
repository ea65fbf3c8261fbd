"""Where training batches come from: a `BatchSource` opens `Batches` at a position.

`Batches` yields raw [B, width] arrays and knows `position`, the global index of its next
batch; the loop stores that position in its checkpoints and opens the source there again
to resume, so the data position has one owner. `raysae.data.LocalSource` and
`raysae.stream.SharedSource` are sources; `as_source` wraps a plain iterable (resuming
skips what was consumed) or a callable `start -> iterable`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Batches(Protocol):
    """An open stream of raw [B, width] batches; `position` is the index of the next one."""

    position: int

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __next__(self) -> np.ndarray: ...


@runtime_checkable
class BatchSource(Protocol):
    def open(self, position: int | None) -> Batches:
        """Batches starting at global index `position` (None: where this source starts)."""
        ...


class _Counted:
    """An iterator of batches that counts its position."""

    def __init__(self, items: Iterable[Any], position: int):
        self._items, self.position = iter(items), position

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> np.ndarray:
        item = next(self._items)
        self.position += 1
        return item

    def close(self) -> None:
        close(self._items)


class _CallableSource:
    def __init__(self, fn: Callable[[int], Iterable[Any]]):
        self.fn = fn

    def open(self, position: int | None) -> Batches:
        start = position or 0
        items = self.fn(start)
        return items if isinstance(items, Batches) else _Counted(items, start)


class _IterableSource:
    def __init__(self, items: Iterable[Any]):
        self.items = items

    def open(self, position: int | None) -> Batches:
        start = position or 0
        return _Counted(itertools.islice(iter(self.items), start, None), start)


def as_source(data: Any) -> BatchSource:
    """`data` as a BatchSource: a source as is, a callable `start -> iterable of batches`, or an
    iterable of batches (resuming at position p skips its first p batches)."""
    if isinstance(data, BatchSource):
        return data
    if callable(data):
        return _CallableSource(data)
    return _IterableSource(data)


def close(batches: Any) -> None:
    """Close `batches` if it can be closed (streams deregister from their brokers)."""
    fn = getattr(batches, "close", None)
    if fn:
        try:
            fn()
        except ValueError:  # a generator still running in a reader thread that did not stop
            pass
