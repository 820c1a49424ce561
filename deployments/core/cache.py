"""A bounded least-recently-used map; the text encoder keeps label and prompt embeddings in one,
because classification sends the same label prompts over and over."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    def __init__(self, capacity: int):
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.capacity = capacity
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
