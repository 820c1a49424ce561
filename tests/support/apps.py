"""Extra copies of the app, deployed beside the test session's one for a single test module;
checks that need a cluster of their own; and what the tests ask Serve about an app."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from deployments.config import TextEncoderConfig, VisionEncoderConfig
from deployments.sizing import STAGES

# The model that reads each encoder deployment's user_config.
USER_CONFIG_MODELS = {"VisionEncoder": VisionEncoderConfig, "TextEncoder": TextEncoderConfig}


def _light(app: dict) -> dict:
    """A copy of the app whose stages ask Ray for no CPU, since the session's app was sized to
    the session cluster's CPUs (deployments/sizing.py) and a copy beside it would not fit; and
    that runs one replica per stage unless the test sets a count, since each replica costs
    seconds of CPU to start."""
    app = copy.deepcopy(app)
    listed = {deployment["name"]: deployment for deployment in app.setdefault("deployments", [])}
    if not listed.keys() & set(STAGES):
        return app  # not a copy of the graph (a probe app of the routing tests)
    for stage in STAGES:
        if stage not in listed:
            app["deployments"].append(listed.setdefault(stage, {"name": stage}))
        listed[stage].setdefault("ray_actor_options", {"num_cpus": 0})
        if "autoscaling_config" not in listed[stage]:
            listed[stage].setdefault("num_replicas", 1)
    return app


def _deploy(applications: list[dict], wait: bool = True) -> None:
    """The session's app (the first) and copies beside it."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from deployments.testing.local_cluster import deploy_and_wait

    session_app, *copies = applications
    config = ServeDeploySchema.model_validate(
        {"applications": [session_app, *map(_light, copies)]})
    if wait:
        deploy_and_wait(_get_global_client(), config)
    else:
        _get_global_client().deploy_apps(config, _blocking=False)


@contextmanager
def app_beside(serve_config: dict, name: str, route_prefix: str,
               modify) -> Iterator[Callable[[Callable[[dict], None]], None]]:
    """Deploys a modified copy of the app beside the session's one (Serve's config is declarative,
    so both are sent), and removes it afterwards. `modify(app_config)` edits the copy in place.
    Yields `redeploy(modify_more)`, which re-sends the copy with further edits."""
    session_app = serve_config["applications"][0]
    copy_app = copy.deepcopy(session_app)
    copy_app.update(name=name, route_prefix=route_prefix)
    modify(copy_app)

    def redeploy(modify_more: Callable[[dict], None]) -> None:
        modify_more(copy_app)
        _deploy([session_app, copy_app])

    with deploy_beside_the_session_app(serve_config, [copy_app]):
        yield redeploy


@contextmanager
def deploy_beside_the_session_app(serve_config: dict, applications: list[dict],
                                  wait: bool = True) -> Iterator[None]:
    """Deploys `applications` (Serve config dicts) beside the session's app, and removes them
    afterwards. Without `wait`, returns at once: for an app that is not meant to come up."""
    session_app = serve_config["applications"][0]
    _deploy([session_app, *applications], wait)
    try:
        yield
    finally:
        _deploy([session_app])


def run_check_script(script: str, checkpoint: str, first_key: str) -> dict:
    """Runs `tests/<script> CHECKPOINT` in a process of its own, for a cluster that cannot share
    the test session's Ray, and returns the JSON report it prints: the one line that starts with
    `first_key` (Ray may print its own lines after it)."""
    run = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), checkpoint],
                         capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(next(line for line in run.stdout.splitlines() if line.startswith(f'{{"{first_key}"')))


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    """The response is `status` with OpenAI's error body; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def deployment_config(app: dict, name: str) -> dict:
    return next(deployment for deployment in app["deployments"] if deployment["name"] == name)


def wait_until_running(app: str, timeout_s: float = 120) -> None:
    """Until the app and each of its deployments report healthy."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications[app]
        if status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(serve.status().applications[app])


def text_encoder_cache_stats(app: str) -> dict[str, int]:
    """The TextEncoder caches' counts (entries, hits, misses), over all its replicas."""
    from deployments.testing.local_cluster import ask_each_replica

    totals: dict[str, int] = {}
    for stats in ask_each_replica(app, "TextEncoder", lambda encoder: encoder.cache_stats()):
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def embedding_vectors(body: dict):
    """The float32 vectors of an /v1/embeddings answer, in order (a numpy array)."""
    import numpy as np

    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
