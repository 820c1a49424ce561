"""Past capacity, clients are told so at once: a 503 with Retry-After in OpenAI's error body,
never a hang or a timeout, and the requests that were admitted are answered correctly."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.apps import app_beside
from tests.photos import data_uri, photos

APP = "siglip-overload"
ROUTE = "/overload"
RAW = dict(photos())["retina-large.jpg"]  # the slowest photo to decode: the queue fills


def _tiny_preprocessor_queue(app: dict) -> None:
    for deployment in app["deployments"]:
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
        if deployment["name"] == "ImagePreprocessor":
            deployment.update(max_ongoing_requests=1, max_queued_requests=1)


@pytest.fixture(scope="module")
def overload_url(serve_url, serve_config):
    with app_beside(serve_config, APP, ROUTE, _tiny_preprocessor_queue):
        yield serve_url + ROUTE


def test_a_full_queue_answers_503_with_retry_after_quickly(overload_url, reference):
    expected = reference.image_embeddings([RAW])[0]
    payload = {"input": [{"image": data_uri(RAW)}]}

    def one(_):
        started = time.monotonic()
        response = httpx.post(overload_url + "/v1/embeddings", json=payload, timeout=60)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(24)))
    rejected = [(r, seconds) for r, seconds in results if r.status_code != 200]
    admitted = [r for r, _ in results if r.status_code == 200]
    assert rejected and admitted
    for response, seconds in rejected:
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "overloaded_error"
        assert seconds < 10
    for response in admitted:
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, rtol=0, atol=1e-5)
