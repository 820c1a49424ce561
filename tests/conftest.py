"""Session-wide fixtures. Ray and Serve start once per test session (10-20 s on 2 cores)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from deployments.core.random_checkpoint import make_checkpoint
from tests.reference import Reference

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serve_config.yaml"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weight checkpoint of the real architecture: its outputs are meaningless, but
    every number must still equal the reference computed from it."""
    return str(make_checkpoint("tiny", tmp_path_factory.mktemp("checkpoint") / "tiny"))


@pytest.fixture(scope="session")
def reference(tiny_checkpoint) -> Reference:
    return Reference(tiny_checkpoint)


@pytest.fixture(scope="session")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def serve_url(tiny_checkpoint, serve_config):
    """The graph deployed from serve_config.yaml exactly as `serve run` deploys it, with the
    tiny checkpoint chosen through SIGLIP_MODEL, on a free port."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["SIGLIP_MODEL"] = tiny_checkpoint  # inherited by the Ray workers started below
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema
    from ray import serve

    config = ServeDeploySchema.model_validate(
        {**serve_config, "http_options": {"host": "127.0.0.1", "port": _free_port()}})
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                   proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=True)
    for app in config.applications:
        client._wait_for_application_running(app.name, timeout_s=180)
    yield f"http://127.0.0.1:{config.http_options.port}"
    serve.shutdown()
    ray.shutdown()
