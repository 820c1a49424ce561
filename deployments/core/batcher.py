"""Dynamic batching across concurrent requests: plain asyncio, no Ray.

Why not Ray's `@serve.batch`: in Ray 2.60 it closes each batch when its wait ends and only then
queues it for the "one batch at a time" semaphore (since ray-project/ray#53096). While a
forward pass runs, the requests that arrive pile up as many one-item batches, each waiting its
turn; on a busy replica every forward pass runs at batch size 1. Here one worker closes the
next batch only when the previous one is done, so whatever queued during a forward pass goes
into the next one together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

Result = TypeVar("Result")


@dataclass
class _Pending:
    chunk: Sequence
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher(Generic[Result]):
    """Runs `run_batch` on chunks from many callers at once, one batch at a time.

    A batch holds whole chunks, at most `max_batch_size` items (`len` of each chunk) unless a
    single chunk is larger. Once the first chunk is in, the batch waits at most
    `batch_wait_timeout_s` for more, and no longer once the next chunk would not fit.
    `run_batch` returns one result per chunk, in order; if it raises, every caller of that
    batch gets the error. Both settings may be changed while it runs.
    """

    def __init__(self, run_batch: Callable[[list[Sequence]], Awaitable[list[Result]]],
                 max_batch_size: int, batch_wait_timeout_s: float):
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._run_batch = run_batch
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def submit(self, chunk: Sequence) -> Result:
        pending = _Pending(chunk)
        self._queue.append(pending)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await pending.future

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                results = await self._run_batch([pending.chunk for pending in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for "
                                       f"{len(batch)} chunks")
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():  # cancelled: its caller has gone
                    pending.future.set_result(result)

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch: list[_Pending] = []
        deadline = None
        while True:
            # A caller that went away while the batch waited for company leaves it.
            batch = [pending for pending in batch if not pending.future.cancelled()]
            size = sum(len(pending.chunk) for pending in batch)
            if not batch:
                deadline = None
            while self._queue and (not batch or
                                   size + len(self._queue[0].chunk) <= self.max_batch_size):
                pending = self._queue.popleft()
                if pending.future.cancelled():
                    continue
                batch.append(pending)
                size += len(pending.chunk)
            if batch:
                if deadline is None:
                    deadline = loop.time() + self.batch_wait_timeout_s
                if self._queue or size >= self.max_batch_size or loop.time() >= deadline:
                    return batch
            self._arrived.clear()
            timeout = deadline - loop.time() if batch else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
