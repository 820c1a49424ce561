"""The LRU cache that the Ingress replicas and the text encoder keep text embeddings in."""

from __future__ import annotations

import base64

import asyncio

import pytest

from deployments.core.cache import inline_image_key, LRUCache, get_or_compute


def test_the_least_recently_used_entry_goes_first():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert cache.lookup(["a", "b", "c"]) == ({"a": 1, "c": 3}, ["b"])


class _Computer:
    def __init__(self):
        self.calls: list[list[str]] = []

    async def __call__(self, keys: list[str]) -> list[str]:
        self.calls.append(keys)
        return [key.upper() for key in keys]


@pytest.mark.parametrize("keys", [["cat", "dog", "cat"], ["eel", "dog"], ["eel", "cat", "eel"]])
def test_only_keys_not_kept_are_computed_once_each_and_all_come_back_in_order(keys):
    lookups = []
    cache, compute = LRUCache(16, on_lookup=lambda hits, misses: lookups.append((hits, misses))), _Computer()
    for earlier in (["cat", "dog", "cat"], ["dog", "eel"]):
        asyncio.run(get_or_compute(cache, earlier, compute))
    assert compute.calls == [["cat", "dog"], ["eel"]] and lookups == [(0, 2), (1, 1)]

    assert asyncio.run(get_or_compute(cache, keys, compute)) == [key.upper() for key in keys]
    assert len(compute.calls) == 2 and lookups[-1] == (len(set(keys)), 0)


def test_a_cache_of_capacity_zero_computes_every_time():
    cache, compute = LRUCache(0), _Computer()
    for _ in range(2):
        assert asyncio.run(get_or_compute(cache, ["cat"], compute)) == ["CAT"]
    assert compute.calls == [["cat"], ["cat"]]


def test_inline_images_are_keyed_by_their_bytes_and_urls_never():
    payload = base64.b64encode(b"\xff\xd8 some jpeg bytes").decode()
    key = inline_image_key(payload)
    assert inline_image_key(f"data:image/jpeg;base64,{payload}") == key
    assert inline_image_key(f"data:image/png;base64,{payload[:8]}\n{payload[8:]}") == key
    assert inline_image_key(base64.b64encode(b"\xff\xd8 other bytes").decode()) != key
    assert inline_image_key("https://example.com/cat.jpg") is None
    assert inline_image_key("http://example.com/cat.jpg") is None
    # Refused by the preprocessor every time, so never answered from the cache instead.
    assert inline_image_key(f"data:image/jpeg,{payload}") is None
