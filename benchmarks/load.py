"""HTTP load generators: closed loop at a fixed concurrency and open loop with Poisson arrivals.
Both are bounded in time and count every request, so no run can hang the benchmark."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx
import numpy as np


@dataclass
class LoadResult:
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    cut: int = 0  # requests still running when the run's time was up, cancelled
    error_samples: list[str] = field(default_factory=list)

    def record_error(self, description: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(description[:300])

    def summary(self, items_per_request: int) -> dict:
        done = len(self.latencies_s)
        percentiles = (np.percentile(self.latencies_s, [50, 95, 99]) * 1e3).round(1).tolist() if done else [None] * 3
        return {"requests": done, "errors": self.errors, "cut": self.cut, "seconds": round(self.seconds, 2),
                "requests_per_s": round(done / self.seconds, 3),
                "items_per_s": round(done * items_per_request / self.seconds, 3),
                "p50_ms": percentiles[0], "p95_ms": percentiles[1], "p99_ms": percentiles[2],
                "error_samples": self.error_samples}


async def _send(client: httpx.AsyncClient, path: str, body: bytes, result: LoadResult) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError as error:
        result.record_error(f"{type(error).__name__}: {error}")
        return
    if response.status_code == 200:
        result.latencies_s.append(time.perf_counter() - started)
    else:
        result.record_error(f"{response.status_code}: {response.text}")


def _client(base_url: str, connections: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s)


async def closed_loop(base_url: str, path: str, next_body: Callable[[], bytes], concurrency: int,
                      duration_s: float, drain_s: float = 30, timeout_s: float = 120) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the last one returns,
    for `duration_s`. Requests still in flight then get `drain_s` more; any left are cancelled
    (the client disconnects) and counted as `cut`, neither done nor failed."""
    started = time.perf_counter()
    deadline = started + duration_s
    result = LoadResult(seconds=0)
    async with _client(base_url, concurrency, timeout_s) as client:
        async def worker():
            while time.perf_counter() < deadline:
                await _send(client, path, next_body(), result)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, unfinished = await asyncio.wait(workers, timeout=duration_s + drain_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        result.cut = len(unfinished)
        result.seconds = time.perf_counter() - started
    return result


async def open_loop(base_url: str, path: str, next_body: Callable[[], bytes], rate_per_s: float,
                    duration_s: float, max_in_flight: int = 256, timeout_s: float = 120,
                    drain_s: float = 30, seed: int = 0) -> LoadResult:
    """Requests arrive as a Poisson process at `rate_per_s` for `duration_s`, whatever the
    server's speed. Arrivals beyond `max_in_flight` outstanding requests, and requests still
    unanswered `drain_s` after the last arrival, count as errors."""
    rng = random.Random(seed)
    result = LoadResult(seconds=0)
    tasks: set[asyncio.Task] = set()
    async with _client(base_url, max_in_flight, timeout_s) as client:
        started = time.perf_counter()
        next_arrival = started
        while next_arrival < started + duration_s:
            await asyncio.sleep(max(0.0, next_arrival - time.perf_counter()))
            if len(tasks) >= max_in_flight:
                result.record_error("dropped: too many requests in flight")
            else:
                task = asyncio.create_task(_send(client, path, next_body(), result))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_arrival += rng.expovariate(rate_per_s)
        if tasks:
            _, unfinished = await asyncio.wait(set(tasks), timeout=drain_s)
            for task in unfinished:
                task.cancel()
                result.record_error(f"unanswered {drain_s}s after the last arrival")
        result.seconds = time.perf_counter() - started
    return result
