"""Serve's side of a replica's life, with our settings: a replica whose model can no longer
compute fails `check_health` and is replaced; a replica stopped by a scale-down finishes the
batches in flight within `graceful_shutdown_timeout_s`, and (the control) loses them without it;
requests that arrive while a replica's forward pass runs share its next one.

A copy of the app serves a VisionEncoder from tests/support/fault_injection.py (each forward pass takes
2 s), with retries off so that a lost batch reaches the client instead of being re-sent."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.testing.local_cluster import replica_actors, running_replicas
from tests.support.apps import app_beside, deployment_config, wait_until_running
from tests.support.photos import data_uri, photos

APP = "siglip-lifecycle"
ROUTE = "/lifecycle"
RAWS = [raw for _, raw in photos()[:8]]
URIS = [data_uri(raw) for raw in RAWS]


def _faulty(app: dict) -> None:
    app["args"]["ingress_image_cache_size"] = 0  # every image to the encoders: they are watched
    app["import_path"] = "tests.support.fault_injection:build_faulty_app"
    app["args"]["stage_retries"] = 0
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    vision = deployment_config(app, "VisionEncoder")
    vision.update(num_replicas=2, health_check_period_s=1, graceful_shutdown_wait_loop_s=0.5)


@pytest.fixture(scope="module")
def lifecycle(serve_url, serve_config):
    with app_beside(serve_config, APP, ROUTE, _faulty) as redeploy:
        wait_until_running(APP)
        yield serve_url + ROUTE, redeploy


def _vision_replicas(count: int, graceful_shutdown_timeout_s: float = 30):
    def modify(app: dict) -> None:
        deployment_config(app, "VisionEncoder").update(
            num_replicas=count, graceful_shutdown_timeout_s=graceful_shutdown_timeout_s)
    return modify


def _embed_each(url: str, during=lambda: None) -> list:
    """One image-embedding request per photo, all at once; `during()` runs 1 s in, while each
    VisionEncoder replica is inside a forward pass. Returns the responses or the exceptions."""
    def embed(uri: str):
        try:
            return httpx.post(url + "/v1/embeddings", json={"input": [{"image": uri}]}, timeout=60)
        except httpx.HTTPError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(URIS)) as pool:
        responses = pool.map(embed, URIS)
        time.sleep(1)
        during()
        return list(responses)


def _assert_all_correct(responses: list, reference) -> None:
    expected = reference.image_embeddings(RAWS)
    for response, vector in zip(responses, expected):
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], vector, rtol=0, atol=1e-5)


@pytest.mark.parametrize("graceful_shutdown_timeout_s, batches_finish", [(30, True), (0.1, False)])
def test_scale_down_finishes_the_batches_in_flight(lifecycle, reference, graceful_shutdown_timeout_s,
                                                   batches_finish):
    url, redeploy = lifecycle
    redeploy(_vision_replicas(2, graceful_shutdown_timeout_s))
    wait_until_running(APP)
    assert running_replicas(APP, "VisionEncoder") == 2

    responses = _embed_each(url, during=lambda: redeploy(_vision_replicas(1, graceful_shutdown_timeout_s)))
    wait_until_running(APP)
    assert running_replicas(APP, "VisionEncoder") == 1
    lost = [r for r in responses if not (isinstance(r, httpx.Response) and r.status_code == 200)]
    print(f"\nscale-down 2->1 with {graceful_shutdown_timeout_s} s grace: "
          f"{len(responses) - len(lost)} of {len(responses)} requests answered")
    if batches_finish:
        _assert_all_correct(responses, reference)
    else:  # the control: without the grace period the stopped replica's batches are lost
        assert lost, "the replica stopped without a grace period lost nothing: this test proves nothing"
        assert all(r.status_code == 503 for r in lost), lost


def test_replica_whose_model_breaks_fails_its_health_check_and_is_replaced(lifecycle, reference):
    url, redeploy = lifecycle
    redeploy(_vision_replicas(1))
    wait_until_running(APP)
    _assert_all_correct(_embed_each(url), reference)
    [broken] = replica_actors(APP, "VisionEncoder")

    serve.get_deployment_handle("VisionEncoder", APP).break_model.remote().result()
    broken_at = time.monotonic()
    deadline = broken_at + 120
    while [actor._actor_id for actor in replica_actors(APP, "VisionEncoder")] == [broken._actor_id]:
        assert time.monotonic() < deadline, "the broken replica was never replaced"
        time.sleep(0.5)
    replaced_s = time.monotonic() - broken_at
    wait_until_running(APP)
    print(f"\nbroken replica replaced after {replaced_s:.1f} s; healthy again after "
          f"{time.monotonic() - broken_at:.1f} s")
    _assert_all_correct(_embed_each(url), reference)


def test_requests_arriving_during_a_forward_pass_share_the_next(lifecycle, reference):
    """Batching across requests without a batch wait: the first request starts a 2 s forward
    pass alone; the others, sent at the same moment, arrive during it and share the next."""
    url, redeploy = lifecycle
    redeploy(_vision_replicas(1))
    wait_until_running(APP)
    vision = serve.get_deployment_handle("VisionEncoder", APP)
    before = vision.batch_stats.remote().result()["forward_passes"]
    _assert_all_correct(_embed_each(url), reference)
    after = vision.batch_stats.remote().result()["forward_passes"]
    new_passes = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert sum(size * count for size, count in new_passes.items()) == len(URIS)
    # Decoding all eight takes well under 2 s: at most one more pass for a straggler.
    assert sum(new_passes.values()) <= 3, new_passes
