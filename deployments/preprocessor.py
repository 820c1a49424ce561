"""ImagePreprocessor stage (CPU): image references (base64, data URIs, http(s) URLs) in, uint8
pixels at the checkpoint's size out. URLs are fetched here, not in the ingress, so the
ingress never waits on a slow image server and fetching scales with this stage."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from ray import serve

from deployments.core.checkpoint import ImageSettings
from deployments.core.fetch import ImageFetcher, ImageUrlPolicy
from deployments.core.images import preprocess_references
from deployments.core.limits import ImageLimits
from deployments.core.resize import BandedResizer
from deployments.metrics import FetchMetrics, StageMetrics


@serve.deployment
class ImagePreprocessor:
    def __init__(self, model: str, limits: ImageLimits, jpeg_draft: bool, url_policy: ImageUrlPolicy):
        self._settings = ImageSettings.from_pretrained(model)
        self._limits = limits
        self._jpeg_draft = jpeg_draft
        self._fetcher = ImageFetcher(url_policy, limits, FetchMetrics().record)
        # One decode at a time per CPU the replica holds: more threads add no throughput, and
        # concurrent decodes of large photos evict each other from the caches. As many helpers
        # share large photos' resizes while no image waits for a decode thread: at low load,
        # cores the decode threads would leave unused cut a lone photo's latency.
        threads = max(1, math.ceil(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self._decoder = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._resizer = BandedResizer(helper_threads=threads)
        self._metrics = StageMetrics()

    async def preprocess(self, references: list[str], params: list[str]) -> np.ndarray:
        """`params` name each image in the client's request, for error messages."""
        with self._metrics.timed(), self._resizer.images_in_flight(len(references)):
            return await preprocess_references(references, params, self._settings, self._limits,
                                               self._jpeg_draft, self._fetcher, self._decoder,
                                               self._resizer)
