"""Work shared by concurrent callers, and dropped when none of them waits for it any more."""

from __future__ import annotations

import asyncio

from deployments.core.single_flight import SingleFlight


class Squares:
    """Computes squares once `release` is set, recording each call and each cancelled one."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.cancelled: list[list[int]] = []
        self.release = asyncio.Event()

    async def compute(self, keys: list[int]) -> dict[int, int]:
        self.calls.append(keys)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(keys)
            raise
        if any(key < 0 for key in keys):
            raise ValueError("negative")
        return {key: key * key for key in keys}


async def _started(*coroutines) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    await asyncio.sleep(0.01)  # every caller is waiting on its flight
    return tasks


def test_concurrent_callers_share_the_keys_in_flight_and_compute_only_new_ones():
    async def run():
        squares = Squares()
        flights = SingleFlight(squares.compute)
        first, second = await _started(flights.get([1, 2, 2]), flights.get([2, 3]))
        squares.release.set()
        return await first, await second, squares.calls, len(flights)

    first, second, calls, left = asyncio.run(run())
    assert (first, second) == ({1: 1, 2: 4}, {2: 4, 3: 9})
    assert calls == [[1, 2], [3]]
    assert left == 0


def test_work_goes_on_while_any_caller_still_waits_for_it():
    async def run():
        squares = Squares()
        flights = SingleFlight(squares.compute)
        gone, kept = await _started(flights.get([1]), flights.get([1]))
        gone.cancel()
        await asyncio.sleep(0.01)
        squares.release.set()
        return await kept, squares.calls, squares.cancelled

    assert asyncio.run(run()) == ({1: 1}, [[1]], [])


def test_work_no_caller_waits_for_is_cancelled_and_computed_afresh_when_asked_again():
    async def run():
        squares = Squares()
        flights = SingleFlight(squares.compute)
        tasks = await _started(flights.get([1, 2]), flights.get([2]))
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0.01)
        in_flight_after = len(flights)
        squares.release.set()
        return await flights.get([2]), squares.calls, squares.cancelled, in_flight_after

    again, calls, cancelled, in_flight_after = asyncio.run(run())
    assert cancelled == [[1, 2]] and in_flight_after == 0
    assert again == {2: 4} and calls == [[1, 2], [2]]


def test_a_failure_reaches_every_caller_of_the_flight_and_is_not_kept():
    async def run():
        squares = Squares()
        flights = SingleFlight(squares.compute)
        tasks = await _started(flights.get([-1]), flights.get([-1, 2]))
        squares.release.set()
        failures = await asyncio.gather(*tasks, return_exceptions=True)
        return failures, len(flights)

    failures, left = asyncio.run(run())
    assert [str(error) for error in failures] == ["negative", "negative"]
    assert left == 0
