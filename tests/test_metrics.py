"""The custom metrics reach Prometheus' endpoint with the stage they describe."""

from __future__ import annotations

import re
import time

import httpx

from tests.support.photos import data_uri, photos

URI = data_uri(photos()[0][1])


def _scrape_until(port: int, patterns: list[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        if all(re.search(pattern, text) for pattern in patterns):
            return text
        time.sleep(1)
    missing = [pattern for pattern in patterns if not re.search(pattern, text)]
    raise AssertionError(f"not exported after {timeout_s}s: {missing}")


def test_stage_batch_cache_and_error_metrics_are_exported(serve_url, metrics_port):
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        for _ in range(2):  # the second time, the image and both labels come from the caches
            assert client.post("/v1/classify", json={"input": [URI], "labels": ["a", "b"]}).status_code == 200
        assert client.post("/v1/rerank", json={"query": "a", "documents": ["b"]}).status_code == 200
        assert client.post("/v1/classify", json={"input": ["%%%"], "labels": ["a"]}).status_code == 400
    stage = r'ray_siglip_stage_latency_ms_bucket\{{[^}}]*deployment="{}"'
    _scrape_until(metrics_port, [
        *(stage.format(name) for name in ("ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion")),
        r'ray_siglip_batch_size_bucket\{[^}]*deployment="VisionEncoder"',
        r'ray_siglip_items_encoded(_total)?\{[^}]*deployment="TextEncoder"',
        r'ray_siglip_text_cache_hits(_total)?\{[^}]*\} [1-9]',
        r'ray_siglip_text_cache_misses(_total)?\{',
        r'ray_siglip_image_cache_hits(_total)?\{[^}]*\} [1-9]',
        r'ray_siglip_image_cache_misses(_total)?\{',
        r'ray_siglip_request_errors(_total)?\{[^}]*type="invalid_request_error"[^}]*\} [1-9]',
    ])
