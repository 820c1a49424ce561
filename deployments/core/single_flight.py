"""Work shared by concurrent callers, as Go's `singleflight`: a key being computed now is awaited,
not computed again, however many callers ask for it; and work that no caller waits for any
more is cancelled, so a burst of requests whose clients went away leaves no backlog behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(eq=False)
class _Flight(Generic[K, V]):
    keys: list[K]
    task: asyncio.Task[dict[K, V]]
    waiters: int = 0


class SingleFlight(Generic[K, V]):
    """`get(keys)` returns `compute(keys)`'s values, computing in one call only the keys that
    no other caller's call is computing already."""

    def __init__(self, compute: Callable[[list[K]], Awaitable[dict[K, V]]]):
        self._compute = compute
        self._flights: dict[K, _Flight[K, V]] = {}

    def __len__(self) -> int:
        """Keys being computed now."""
        return len(self._flights)

    async def get(self, keys: Iterable[K]) -> dict[K, V]:
        keys = list(dict.fromkeys(keys))
        new = [key for key in keys if key not in self._flights]
        if new:
            self._start(new)
        flights = list(dict.fromkeys(self._flights[key] for key in keys))
        for flight in flights:
            flight.waiters += 1
        try:
            # Shielded: one caller going away must not cancel the others' work.
            computed = await asyncio.gather(*(asyncio.shield(flight.task) for flight in flights))
        finally:
            for flight in flights:
                flight.waiters -= 1
                if flight.waiters == 0 and not flight.task.done():
                    self._forget(flight)
                    flight.task.cancel()
        values = {key: value for part in computed for key, value in part.items()}
        return {key: values[key] for key in keys}

    def _start(self, keys: list[K]) -> None:
        flight = _Flight(keys, asyncio.create_task(self._compute(keys)))
        flight.task.add_done_callback(lambda _: self._forget(flight))
        self._flights.update(dict.fromkeys(keys, flight))

    def _forget(self, flight: _Flight[K, V]) -> None:
        for key in flight.keys:
            if self._flights.get(key) is flight:
                del self._flights[key]
