"""Prometheus metrics of the serving graph. Ray exports them on every node's metrics port with
a `ray_` prefix (`ray_siglip_stage_latency_seconds_bucket{deployment="VisionEncoder",...}`) and
appends `_total` to counters; Serve adds the deployment, replica and application tags itself.
Durations are in seconds, as Prometheus' conventions ask (Ray's own Serve metrics keep their
milliseconds). Create them inside a replica. docs/operations.md lists them all."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Iterator

from ray.serve.metrics import Counter, Histogram

SECONDS_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class StageMetrics:
    """Latency of one stage's calls, as that stage sees them (queueing in its batch included)."""

    def __init__(self) -> None:
        self.latency = Histogram("siglip_stage_latency_seconds", boundaries=SECONDS_BOUNDARIES,
                                 description="Time a stage spends on one call, in seconds.")

    def timed(self):
        return _timed(self.latency)


@contextmanager
def _timed(histogram: Histogram) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


class EncoderMetrics(StageMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = Histogram("siglip_batch_size", boundaries=BATCH_SIZE_BOUNDARIES,
                                    description="Items (images or texts) per forward pass.")
        self.items_encoded = Counter("siglip_items_encoded",
                                     description="Images or texts run through the tower.")
        self.forward = Histogram("siglip_forward_seconds", boundaries=SECONDS_BOUNDARIES,
                                 description="One forward pass of a batch through the tower, in seconds.")

    def forward_timed(self):
        return _timed(self.forward)


class FetchMetrics:
    """Images fetched from URLs by the preprocessor."""

    def __init__(self) -> None:
        self._seconds = Histogram("siglip_image_fetch_seconds", boundaries=SECONDS_BOUNDARIES,
                                  description="Fetching one image URL, redirects included, in seconds.")
        self._bytes = Counter("siglip_image_fetch_bytes", description="Bytes of images fetched from URLs.")

    def record(self, seconds: float, size: int) -> None:
        self._seconds.observe(seconds)
        if size:  # Ray's counters refuse a zero increment
            self._bytes.inc(size)


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
