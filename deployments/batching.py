"""Dynamic batching shared by the two encoder deployments."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar, Sequence

import torch
from ray import serve

from deployments.config import BatchingConfig
from deployments.core.batcher import Batcher
from deployments.core.embeddings import Embeddings
from deployments.metrics import EncoderMetrics


class BatchedEncoder:
    """Batches items (images or texts) across concurrent requests.

    A request's items are cut into chunks no larger than `max_batch_size`, so that no forward
    pass is larger than configured, and chunks from many requests share one forward pass. The
    forward pass runs in a worker thread, so the next batch keeps filling while it computes.
    """

    config_model: ClassVar[type[BatchingConfig]]

    def __init__(self, core, torch_threads: int | None):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self._core = core
        self.config = self.config_model()
        self._batcher = Batcher(self._encode_batch, self._max_batch_size(),
                                self.config.batch_wait_timeout_s)
        self._batch_sizes: Counter[int] = Counter()  # achieved batch size -> forward passes
        self.metrics = EncoderMetrics()

    def reconfigure(self, user_config: dict) -> None:
        """serve_config.yaml's `user_config`; applied in place, without a restart."""
        self.config = self.config_model.model_validate(user_config)
        self._batcher.max_batch_size = self._max_batch_size()
        self._batcher.batch_wait_timeout_s = self.config.batch_wait_timeout_s

    def _max_batch_size(self) -> int:
        return self.config.max_batch_size_on(self._core.device.type)

    def effective_config(self) -> dict[str, Any]:
        """What this replica really runs with, for operators and tests."""
        deployment_config = serve.get_replica_context()._deployment_config
        return {**self.config.model_dump(), "device": self._core.device.type,
                "dtype": str(self._core.dtype).removeprefix("torch."),
                "batcher_max_batch_size": self._batcher.max_batch_size,
                "batcher_wait_timeout_s": self._batcher.batch_wait_timeout_s,
                "max_ongoing_requests": deployment_config.max_ongoing_requests,
                "torch_threads": torch.get_num_threads()}

    def batch_stats(self) -> dict[str, Any]:
        """This replica's id, and how many forward passes it ran at each batch size (in items)
        since it started."""
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "forward_passes": dict(self._batch_sizes)}

    def check_health(self) -> None:
        # Raising here makes Serve replace the replica.
        self._core.self_test()

    async def encode(self, items: Sequence) -> Embeddings:
        """Unit embeddings of a request's items (pixels or texts), in order."""
        with self.metrics.timed():
            return await self._encode_request(items)

    async def _encode_request(self, items: Sequence) -> Embeddings:
        return await self._encode_items(items)

    async def _encode_items(self, items: Sequence) -> Embeddings:
        size = self._batcher.max_batch_size
        chunks = [items[start:start + size] for start in range(0, len(items), size)]
        return Embeddings.concatenate(await asyncio.gather(*map(self._batcher.submit, chunks)))

    async def _encode_batch(self, chunks: list[Sequence]) -> list[Embeddings]:
        size = sum(len(chunk) for chunk in chunks)
        self._batch_sizes[size] += 1
        self.metrics.batch_size.observe(size)
        self.metrics.items_encoded.inc(size)
        with self.metrics.forward_timed():
            merged = await asyncio.to_thread(self._core.encode, self._merge(chunks))
        return merged.split([len(chunk) for chunk in chunks])

    @staticmethod
    def _merge(chunks: list[Sequence]):
        raise NotImplementedError
