"""Session-wide fixtures. Ray and Serve start once per test session (10-20 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from deployments.core.collection_rules import COLLECTIONS_URI_ENV_VAR
from deployments.testing.random_checkpoint import make_checkpoint
from deployments.testing.local_cluster import free_port, serve_locally
from tests.support.reference import Reference

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serve_config.yaml"


def pytest_collection_modifyitems(items):
    """Tests that start a Ray cluster of their own run first: once the session's cluster is up
    it takes CPU from them (on 2 cores, 100 s instead of 55-70 s each)."""
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weight checkpoint of the real architecture: its outputs are meaningless, but
    every number must still equal the reference computed from it."""
    return str(make_checkpoint("tiny", tmp_path_factory.mktemp("checkpoint") / "tiny"))


@pytest.fixture(scope="session")
def current_layout_checkpoint(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny checkpoint saved again by transformers' own save_pretrained, in the layout
    transformers 5 writes: one processor_config.json, no preprocessor_config.json."""
    from transformers import AutoProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("checkpoint") / "tiny-current-layout"
    SiglipModel.from_pretrained(tiny_checkpoint).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny_checkpoint, backend="pil").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint) -> Reference:
    return Reference(tiny_checkpoint)


@pytest.fixture(scope="session")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def serve_url(tiny_checkpoint, serve_config, metrics_port, tmp_path_factory):
    """The graph deployed from serve_config.yaml exactly as `serve run` deploys it, with the
    tiny checkpoint chosen through SIGLIP_MODEL, on a free port, its collections in a
    temporary folder chosen through SIGLIP_COLLECTIONS_URI."""
    os.environ[COLLECTIONS_URI_ENV_VAR] = str(tmp_path_factory.mktemp("collections"))
    # Autoscaling metrics reach the controller every 10 s by default; Ray's own autoscaling
    # tests shorten that, and so do we (tests/test_autoscaling.py waits on it).
    os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.2")
    # The CPUs of the project's CI machine, which `serve run` gives Ray there: the app sizes
    # itself to them (deployments/sizing.py). Copies deployed beside it ask for none
    # (tests/support/apps.py).
    with serve_locally(serve_config, tiny_checkpoint, num_cpus=2, metrics_export_port=metrics_port) as url:
        yield url



@pytest.fixture(scope="session")
def client(serve_url):
    """An HTTP client of the session's graph."""
    import httpx

    with httpx.Client(base_url=serve_url, timeout=120) as http:
        yield http
