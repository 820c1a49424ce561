"""Killing encoder replicas in the middle of a request stream costs the clients nothing: the
ingress re-sends a request whose stage calls lost their replica, and every answer is still the
reference's. Runs on the session cluster and waits for it to heal before returning."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import ray

from deployments.testing.local_cluster import replica_actors
from tests.support.apps import wait_until_running
from tests.support.photos import data_uri, distinct, photos

APP = "siglip"
RAWS = [raw for _, raw in photos()[:6]]
LABELS = ["cat", "rocket", "cup of coffee"]
PROMPTS = [f"This is a photo of {label}." for label in LABELS]


def test_killing_encoder_replicas_mid_stream_loses_no_request(serve_url, reference):
    scores = reference.scores(RAWS, PROMPTS)
    texts = [f"stream text {i}" for i in range(200)]  # fresh texts: the cache cannot hide a dead encoder
    text_vectors = reference.text_embeddings(texts)
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        photo = i % len(RAWS)
        try:
            with httpx.Client(base_url=serve_url, timeout=120) as client:
                if i % 2:
                    # An image not sent before: the image cache cannot hide a dead encoder.
                    uri = data_uri(distinct(RAWS[photo], i))
                    body = client.post("/v1/classify", json={"input": [uri], "labels": LABELS})
                    body.raise_for_status()
                    got = {p["label"]: p["score"] for p in body.json()["data"][0]["predictions"]}
                    np.testing.assert_allclose([got[label] for label in LABELS], scores[photo], rtol=0, atol=1e-5)
                else:
                    body = client.post("/v1/embeddings", json={"input": [texts[i]]})
                    body.raise_for_status()
                    np.testing.assert_allclose(body.json()["data"][0]["embedding"], text_vectors[i], rtol=0, atol=1e-5)
        except Exception as error:  # every failure is collected, none may occur
            failures.append(f"request {i}: {type(error).__name__}: {str(error)[:200]}")
        with lock:
            done[0] += 1

    kills = []

    def killer() -> None:
        for after, deployment in ((30, "VisionEncoder"), (90, "TextEncoder"), (150, "VisionEncoder")):
            while done[0] < after:
                time.sleep(0.01)
            actors = replica_actors(APP, deployment)
            for actor in actors:  # every replica of the stage: no healthy one is left to answer
                ray.kill(actor, no_restart=True)
            kills.append((deployment, len(actors)))

    killing = threading.Thread(target=killer)
    killing.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(200)))
    killing.join()
    wait_until_running(APP)

    assert [deployment for deployment, _ in kills] == ["VisionEncoder", "TextEncoder", "VisionEncoder"]
    assert all(count >= 1 for _, count in kills)
    assert failures == []
