"""ImagePreprocessor stage (CPU): image references in, uint8 pixels at the checkpoint's size out."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from deployments.core.checkpoint import ImageSettings
from deployments.core.images import preprocess_references
from deployments.metrics import StageMetrics


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class ImagePreprocessor:
    def __init__(self, model: str):
        self._settings = ImageSettings.from_pretrained(model)
        self._metrics = StageMetrics()

    async def preprocess(self, references: list[str], params: list[str]) -> np.ndarray:
        """`params` name each image in the client's request, for error messages."""
        # Pillow releases the GIL while decoding and resizing: a thread per request overlaps them.
        with self._metrics.timed():
            return await asyncio.to_thread(preprocess_references, references, params, self._settings)
