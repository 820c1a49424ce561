"""Each stage scales on its own: load on the vision path adds VisionEncoder replicas and none
of TextEncoder, and the other way round; replicas go again once the load stops; every request
answered meanwhile is correct.

A second copy of the app, with tight autoscaling settings (no upscale delay, short look-back,
as Ray's own autoscaling tests use), runs beside the session's app on the session cluster. Its
encoders take 0.5 s per forward pass (tests/support/fault_injection.py), as if waiting on a GPU: four
clients keep an encoder loaded while the CPU stays free for the new replica to start. (Driving
the tiny model's millisecond passes hard enough instead saturated both cores, and a new replica
then took over a minute to start.)"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from deployments.testing.local_cluster import replica_states, running_replicas
from tests.support.apps import app_beside
from tests.support.photos import data_uri, photos

APP = "siglip-autoscaling"
ROUTE = "/autoscaling"
TIGHT = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
         "downscale_delay_s": 2, "look_back_period_s": 0.5, "metrics_interval_s": 0.1}
CLIENTS = 4  # requests ongoing at the loaded encoder: 2 per replica even at 2, over target 1
RAWS = [raw for _, raw in photos()[:4]]
URIS = [data_uri(raw) for raw in RAWS]


def _tighten(app: dict) -> None:
    app["args"]["ingress_image_cache_size"] = 0  # every image to the encoders: they are watched
    app["import_path"] = "tests.support.fault_injection:build_slow_app"
    for deployment in app["deployments"]:
        # Only the encoders may grow: the test watches them alone.
        scaled = deployment["name"] in ("VisionEncoder", "TextEncoder")
        deployment["autoscaling_config"] = TIGHT if scaled else {"min_replicas": 1, "max_replicas": 1}


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(condition.__doc__ or "condition")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def autoscaling_url(serve_url, serve_config):
    with app_beside(serve_config, APP, ROUTE, _tighten):
        _wait_for(lambda: all(running_replicas(APP, encoder) == 1
                              for encoder in ("VisionEncoder", "TextEncoder")), 120)
        yield serve_url + ROUTE


def _settled(deployment: str) -> bool:
    """One replica, running, and none starting or stopping."""
    return replica_states(APP, deployment) == {"RUNNING": 1}


def _drive(url: str, request_for, check, until) -> list[str]:
    """Sends request_for(i) = (path, json) from CLIENTS threads until `until()`; returns failures."""
    failures = []

    def client_loop(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = worker
            while not until():
                try:
                    path, payload = request_for(i)
                    response = client.post(path, json=payload)
                    response.raise_for_status()
                    check(i, response.json())
                except Exception as error:
                    failures.append(f"{type(error).__name__}: {str(error)[:200]}")
                i += CLIENTS

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(client_loop, range(CLIENTS)))
    return failures


def _scale_up_then_down(url: str, loaded: str, idle: str, request_for, check) -> None:
    """Load until `loaded` has 2 replicas running (and 3 s more), then none until it is back
    to 1."""
    _wait_for(lambda: _settled(loaded) and _settled(idle), 60)
    timeline: list[tuple[float, int, int]] = []  # (seconds, loaded's replicas, idle's replicas)
    started = time.monotonic()
    scaled_up, load_stopped = threading.Event(), threading.Event()

    def watch() -> None:
        while time.monotonic() - started < 120:
            timeline.append((round(time.monotonic() - started, 1),
                             running_replicas(APP, loaded), running_replicas(APP, idle)))
            if timeline[-1][1] >= 2:
                scaled_up.set()
            if load_stopped.is_set() and timeline[-1][1] == 1:
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    failures = _drive(url, request_for, check,
                      until=lambda: (scaled_up.is_set() and time.monotonic() - started > 3)
                      or time.monotonic() - started > 90)
    load_stopped.set()
    watcher.join()
    print(f"\n{loaded} load (seconds, {loaded} replicas, {idle} replicas): {timeline}")
    assert failures == []
    assert max(count for _, count, _ in timeline) == 2, f"{loaded} never scaled up"
    assert timeline[-1][1] == 1, f"{loaded} did not scale back down"
    assert all(other == 1 for _, _, other in timeline), f"{idle} scaled without load"


def test_vision_encoder_scales_up_and_down_alone(autoscaling_url, reference):
    expected = reference.image_embeddings(RAWS)

    def check(i, body):
        np.testing.assert_allclose(body["data"][0]["embedding"], expected[i % len(URIS)], rtol=0, atol=1e-5)

    _scale_up_then_down(autoscaling_url, "VisionEncoder", "TextEncoder",
                        lambda i: ("/v1/embeddings", {"input": [{"image": URIS[i % len(URIS)]}]}), check)


def test_text_encoder_scales_up_and_down_alone(autoscaling_url, reference):
    texts = [f"autoscaling text {i}" for i in range(4000)]  # fresh: the cache must not answer

    def check(i, body):
        expected = reference.text_embeddings([texts[i]])[0]
        np.testing.assert_allclose(body["data"][0]["embedding"], expected, rtol=0, atol=1e-5)

    _scale_up_then_down(autoscaling_url, "TextEncoder", "VisionEncoder",
                        lambda i: ("/v1/embeddings", {"input": [texts[i]]}), check)
