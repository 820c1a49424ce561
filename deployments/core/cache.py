"""A bounded least-recently-used map. Text embeddings are kept in them, by each Ingress replica
and by the text encoder, because classification sends the same label prompts over and over;
image embeddings by each Ingress replica, because indexing jobs send the same images again."""

from __future__ import annotations

import hashlib

from collections import OrderedDict
from typing import Awaitable, Callable, Generic, Hashable, Iterable, Sequence, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """`on_lookup(hits, misses)` hears of each `lookup`, for metrics."""

    def __init__(self, capacity: int, on_lookup: Callable[[int, int], None] = lambda hits, misses: None):
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.capacity = capacity
        self._on_lookup = on_lookup
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def lookup(self, keys: Iterable[K]) -> tuple[dict[K, V], list[K]]:
        """The values held for the distinct keys, and the distinct keys it lacks, in order."""
        held = {key: self.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in held.items() if value is None]
        self._on_lookup(len(held) - len(missing), len(missing))
        return {key: value for key, value in held.items() if value is not None}, missing

    def put(self, key: K, value: V) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        self.resize(self.capacity)

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._entries) > max(capacity, 0):
            self._entries.popitem(last=False)


async def get_or_compute(cache: LRUCache[K, V], keys: Sequence[K],
                         compute: Callable[[list[K]], Awaitable[Sequence[V]]]) -> list[V]:
    """The values of `keys` (repeats allowed). The distinct keys the cache lacks are computed
    in one call, in order, and kept."""
    found, missing = cache.lookup(keys)
    if missing:
        for key, value in zip(missing, await compute(missing), strict=True):
            cache.put(key, value)
            found[key] = value
    return [found[key] for key in keys]


def inline_image_key(reference: str) -> str | None:
    """A key for an image sent inline (data URI or base64): the SHA-256 of its base64 text,
    without the data URI's header or line breaks. Equal keys mean equal bytes. None for a URL:
    what a URL names can change, so its embedding is never kept."""
    reference = reference.strip()
    if reference.startswith(("http://", "https://")):
        return None
    if reference.startswith("data:"):
        header, _, reference = reference.partition(",")
        if not header.endswith(";base64"):
            return None  # refused by the preprocessor, every time: never served from the cache
    return hashlib.sha256("".join(reference.split()).encode("utf-8", "replace")).hexdigest()
