"""VisionEncoder stage: uint8 pixels from the preprocessor in, unit image embeddings out."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.batching import BatchedEncoder
from deployments.config import VisionEncoderConfig
from deployments.core.encoders import VisionEncoderCore


@serve.deployment
class VisionEncoder(BatchedEncoder):
    """`encode(pixels)`: (n, h, w, 3) uint8 from the preprocessor -> Embeddings."""

    config_model = VisionEncoderConfig

    def __init__(self, model: str, device: str, dtype: str, torch_threads: int | None):
        super().__init__(VisionEncoderCore.from_pretrained(model, device, dtype), torch_threads)

    @staticmethod
    def _merge(chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks)
