"""Prometheus metrics of the serving graph. Ray exports them on every node's metrics port with
a `ray_` prefix (`ray_siglip_stage_latency_ms_bucket{deployment="VisionEncoder",...}`); Serve
adds the deployment, replica and application tags itself. Create them inside a replica."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Iterator

from ray.serve.metrics import Counter, Histogram

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class StageMetrics:
    """Latency of one stage's calls, as that stage sees them (queueing in its batch included)."""

    def __init__(self) -> None:
        self.latency_ms = Histogram("siglip_stage_latency_ms", boundaries=LATENCY_BOUNDARIES_MS,
                                    description="Time a stage spends on one call, in ms.")

    @contextmanager
    def timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.latency_ms.observe((time.perf_counter() - started) * 1e3)


class EncoderMetrics(StageMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = Histogram("siglip_batch_size", boundaries=BATCH_SIZE_BOUNDARIES,
                                    description="Items (images or texts) per forward pass.")
        self.items_encoded = Counter("siglip_items_encoded",
                                     description="Images or texts run through the tower.")


class CacheMetrics:
    """Lookups in an embedding cache of `kind` ("text" or "image"); the deployment tag tells
    the Ingress's text cache from the encoder's."""

    def __init__(self, kind: str) -> None:
        self._hits = Counter(f"siglip_{kind}_cache_hits", description=f"{kind.title()}s served from the cache.")
        self._misses = Counter(f"siglip_{kind}_cache_misses", description=f"{kind.title()}s not in the cache.")

    def record(self, hits: int, misses: int) -> None:
        for counter, count in ((self._hits, hits), (self._misses, misses)):
            if count:  # Ray's counters refuse a zero increment
                counter.inc(count)


@functools.cache
def request_errors() -> Counter:
    """Created on first use, so only the ingress replica that answers errors makes it."""
    return Counter("siglip_request_errors", tag_keys=("type",),
                   description="Requests answered with an error, by OpenAI error type.")


@functools.cache
def stage_retries() -> Counter:
    return Counter("siglip_stage_retries", description="Requests sent again because a replica "
                   "died under their stage calls.")
