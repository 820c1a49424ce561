"""Readiness and fail-fast: while a stage cannot serve, /health answers 503 naming it and its
error, and a request that needs it gets a 503 naming it at once, not after its timeout; what
needs only the healthy stages still works."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest

from deployments.core.checkpoint import MODEL_ENV_VAR
from deployments.stage_health import StageState, StageWatch
from tests.support.apps import assert_openai_error, deploy_beside_the_session_app
from tests.support.photos import data_uri, photos

STAGES = ["ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion"]
HEALTHY = {stage: StageState("HEALTHY", 1) for stage in STAGES}


def _watch(*answers, max_age_s: float = 60) -> tuple[StageWatch, list]:
    """A StageWatch whose n-th fetch gives answers[n] (an exception raises)."""
    fetches = []

    async def fetch():
        answer = answers[min(len(fetches), len(answers) - 1)]
        fetches.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return StageWatch(fetch, STAGES, max_age_s), fetches


def test_ready_when_every_stage_has_a_running_replica():
    watch, _ = _watch(HEALTHY)
    assert asyncio.run(watch.unready_stages()) == {}


def test_a_failed_stage_and_a_stage_without_replicas_are_named():
    states = {**HEALTHY, "VisionEncoder": StageState("DEPLOY_FAILED", 0, "FileNotFoundError: x"),
              "TextEncoder": StageState("UPDATING", 0, "starting")}
    watch, _ = _watch(states)

    async def check():
        return await watch.unready_stages(), await watch.failed_stages(["VisionEncoder", "TextEncoder"])

    unready, failed = asyncio.run(check())
    assert set(unready) == {"VisionEncoder", "TextEncoder"} and "FileNotFoundError: x" in unready["VisionEncoder"]
    # A stage still starting, or replacing a replica, is waited for: requests fail fast only on a
    # stage that gave up.
    assert set(failed) == {"VisionEncoder"}


def test_states_are_fetched_once_per_max_age_and_requests_read_the_last_ones():
    failed_state = {**HEALTHY, "ScoreFusion": StageState("DEPLOY_FAILED", 0, "boom")}

    async def run():
        watch, fetches = _watch(HEALTHY, failed_state, max_age_s=0.05)
        first = [await watch.failed_stages(STAGES) for _ in range(5)]
        await asyncio.sleep(0.1)
        stale = await watch.failed_stages(STAGES)  # starts a refresh, answers from the last states
        await asyncio.sleep(0.01)
        fresh = await watch.failed_stages(STAGES)
        return first, stale, fresh, fetches

    first, stale, fresh, fetches = asyncio.run(run())
    assert first == [{}] * 5 and stale == {} and set(fresh) == {"ScoreFusion"}
    assert len(fetches) == 2


def test_an_unreachable_controller_blocks_no_request_but_fails_readiness():
    watch, _ = _watch(RuntimeError("controller gone"))

    async def run():
        return await watch.failed_stages(STAGES), await watch.unready_stages()

    failed, unready = asyncio.run(run())
    assert failed == {} and "controller gone" in unready["controller"]


# ---- on the cluster ------------------------------------------------------------------------

APP, ROUTE = "siglip-broken", "/broken"


@pytest.fixture(scope="module")
def broken_url(serve_url, serve_config, current_layout_checkpoint, tmp_path_factory):
    """The app on a checkpoint whose image processor settings are missing: ImagePreprocessor and
    VisionEncoder cannot start; the Ingress, TextEncoder and ScoreFusion can."""
    folder = tmp_path_factory.mktemp("checkpoint") / "no-image-settings"
    shutil.copytree(current_layout_checkpoint, folder)
    (folder / "processor_config.json").unlink()
    app = json.loads(json.dumps(serve_config["applications"][0]))
    app.update(name=APP, route_prefix=ROUTE)
    app["runtime_env"]["env_vars"][MODEL_ENV_VAR] = str(folder)
    for deployment in app["deployments"]:
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
    with deploy_beside_the_session_app(serve_config, [app], wait=False):
        _wait_until(APP, lambda d: d["ImagePreprocessor"].status == "DEPLOY_FAILED"
                    and d["TextEncoder"].replica_states.get("RUNNING", 0) > 0
                    and d["ScoreFusion"].replica_states.get("RUNNING", 0) > 0)
        yield serve_url + ROUTE


def _wait_until(app: str, condition, timeout_s: float = 240) -> None:
    """Until `condition(the app's deployment statuses)` holds."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status and set(STAGES) <= set(status.deployments) and condition(status.deployments):
            return
        time.sleep(1)
    raise TimeoutError(serve.status().applications.get(app))


def test_health_names_the_stage_that_cannot_start(broken_url):
    response = httpx.get(broken_url + "/health", timeout=30)
    assert response.status_code == 503, response.text
    stages = response.json()["stages"]
    assert "ImagePreprocessor" in stages and "image processor settings" in stages["ImagePreprocessor"]
    assert "TextEncoder" not in stages and "ScoreFusion" not in stages
    assert httpx.get(broken_url + "/health/live", timeout=30).json() == {"status": "ok"}


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"input": [{"image": data_uri(photos()[0][1])}]}),
    ("/v1/classify", {"input": [data_uri(photos()[0][1])], "labels": ["cat"]}),
])
def test_a_request_needing_that_stage_gets_503_at_once(broken_url, path, body):
    started = time.monotonic()
    response = httpx.post(broken_url + path, json=body, timeout=120)
    assert time.monotonic() - started < 5
    error = assert_openai_error(response, 503)
    assert error["code"] == "stage_unavailable" and "failed to deploy" in error["message"]
    assert "ImagePreprocessor" in error["message"] or "VisionEncoder" in error["message"]
    assert response.headers["Retry-After"]


def test_requests_that_need_only_healthy_stages_still_work(broken_url):
    response = httpx.post(broken_url + "/v1/embeddings", json={"input": ["a photo of a cat"]}, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
