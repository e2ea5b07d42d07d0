"""The chunks of a streamed completion, as an iterator that takes back what its request
installed in the model however it ends: read to the end, ``close()``, or dropped unread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

__all__ = ["AsyncChunkIterator", "ChunkIterator"]

T = TypeVar("T")


class ChunkIterator(Iterator[T]):
    """The chunks of a streamed completion. The run starts when the request is made (its
    errors raise at once); ``close()``, reading to the end, or dropping the iterator ends it
    and takes back what the request installed in the model."""

    def __init__(self, chunks: Iterator[T], cleanup: Any) -> None:
        self._chunks = chunks
        self._cleanup = cleanup

    def __iter__(self) -> ChunkIterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._chunks)

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._cleanup()

    def __enter__(self) -> ChunkIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class AsyncChunkIterator(AsyncIterator[T]):
    """The chunks of a streamed completion for ``async for``; ``aclose()``, reading to the
    end, or dropping it ends the run and takes back what the request installed."""

    def __init__(self, chunks: AsyncIterator[T], cleanup: Any) -> None:
        self._chunks = chunks
        self._cleanup = cleanup

    def __aiter__(self) -> AsyncChunkIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._cleanup()

    def __del__(self) -> None:
        try:
            self._cleanup()
        except Exception:
            pass
