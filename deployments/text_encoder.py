"""TextEncoder stage: strings in, unit text embeddings out, with an LRU cache in front of the
batch because label prompts repeat across classification requests. Each Ingress replica keeps a
cache of its own in front of this one; this one serves all of them, and outlives them."""

from __future__ import annotations

from ray import serve

from deployments.batching import BatchedEncoder
from deployments.config import TextEncoderConfig
from deployments.core.cache import LRUCache
from deployments.core.embeddings import Embeddings
from deployments.core.encoders import TextEncoderCore
from deployments.core.single_flight import SingleFlight
from deployments.metrics import CacheMetrics


@serve.deployment
class TextEncoder(BatchedEncoder):
    """`encode(texts)`: list of strings -> Embeddings."""

    config_model = TextEncoderConfig

    def __init__(self, model: str, device: str, dtype: str, torch_threads: int | None):
        super().__init__(TextEncoderCore.from_pretrained(model, device, dtype), torch_threads)
        self._cache: LRUCache[str, Embeddings] = LRUCache(self.config.cache_size,
                                                          CacheMetrics("text").record)
        # Without this, a new label set sent by many clients at once (or reaching a new replica
        # under load) was encoded once per request, all in the same batch.
        self._in_flight: SingleFlight[str, Embeddings] = SingleFlight(self._encode_and_cache)

    def reconfigure(self, user_config: dict) -> None:
        super().reconfigure(user_config)
        self._cache.resize(self.config.cache_size)

    def cache_stats(self) -> dict[str, int]:
        return {"entries": len(self._cache), "hits": self._cache.hits, "misses": self._cache.misses}

    async def _encode_request(self, texts: list[str]) -> Embeddings:
        # Safe to cache per string: every text is padded to the same fixed length, so its
        # embedding does not depend on the texts that share its batch.
        found, missing = self._cache.lookup(texts)
        if missing:
            found.update(await self._in_flight.get(missing))
        return Embeddings.concatenate([found[text] for text in texts])

    async def _encode_and_cache(self, texts: list[str]) -> dict[str, Embeddings]:
        computed = await self._encode_items(texts)
        embeddings = dict(zip(texts, computed.rows()))
        for text, embedding in embeddings.items():
            self._cache.put(text, embedding)
        return embeddings

    @staticmethod
    def _merge(chunks: list[list[str]]) -> list[str]:
        return [text for chunk in chunks for text in chunk]
