"""The documented SIGLIP_* variables reach the replicas both ways a user starts the service:
`serve run` starting Ray itself, and `siglip-serve` against a Ray cluster already running
(`serve run` alone cannot carry them there: it sends Ray only the file). The `serve run` test
also puts Ray's HAProxy ingress in front, as docs/operations.md's "HAProxy in front" has a user
do (Serve reads RAY_SERVE_ENABLE_HA_PROXY when its controller starts, so the session's cluster
cannot switch): the same answers and errors as behind Ray's Python proxy, and no HAProxy left
holding the port after Ctrl-C. One cluster checks both, since each costs a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
import yaml

from deployments.gate import key_digest
from deployments.launch import replica_environment, with_environment
from deployments.testing.local_cluster import HAPROXY_ENV_VAR, HAPROXY_PACKAGE_DIR, free_port
from tests.conftest import SERVE_CONFIG
from tests.support.photos import data_uri, photos

KEY = "launch-test-key"
MAX_BODY_BYTES = 8 * 2**20  # above the four photos' request


def test_the_replicas_get_absolute_paths_and_only_digests_of_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    env = replica_environment({"SIGLIP_MODEL": "ckpt", "SIGLIP_API_KEYS": f"{KEY}, other",
                               "SIGLIP_API_KEYS_FILE": "/run/secrets/keys", "HOME": "/root"})
    assert env == {"SIGLIP_MODEL": str(tmp_path / "ckpt"), "SIGLIP_API_KEYS_FILE": "/run/secrets/keys",
                   "SIGLIP_API_KEY_SHA256": f"{key_digest(KEY).hex()},{key_digest('other').hex()}"}
    assert replica_environment({"SIGLIP_MODEL": "org/model"}) == {"SIGLIP_MODEL": "org/model"}
    # A collections folder that does not exist yet is made absolute too; a URI stays as given.
    assert replica_environment({"SIGLIP_COLLECTIONS_URI": "store"}) == {"SIGLIP_COLLECTIONS_URI": str(tmp_path / "store")}
    assert replica_environment({"SIGLIP_COLLECTIONS_URI": "s3://b/c"}) == {"SIGLIP_COLLECTIONS_URI": "s3://b/c"}


def test_the_shells_variables_win_over_the_files_and_keep_the_others():
    config = {"applications": [{"name": "a", "runtime_env": {"env_vars": {"SIGLIP_MODEL": "old", "X": "1"}}},
                               {"name": "b"}]}
    changed = with_environment(config, {"SIGLIP_MODEL": "new"})
    assert [app["runtime_env"]["env_vars"] for app in changed["applications"]] == [
        {"SIGLIP_MODEL": "new", "X": "1"}, {"SIGLIP_MODEL": "new"}]
    assert config["applications"][0]["runtime_env"]["env_vars"]["SIGLIP_MODEL"] == "old"


def _config_file(folder: Path) -> tuple[Path, str]:
    """serve_config.yaml on a free port, one replica per stage: this test is about the
    environment, and the sized defaults would start more replicas than it needs."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["applications"][0]["args"]["limits"] = {"max_body_bytes": MAX_BODY_BYTES}
    for deployment in config["applications"][0]["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, f"http://127.0.0.1:{port}"


def _clean_environment(**variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SIGLIP_", "RAY_"))}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **variables}


def _wait_until_ready(base: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() in (None, 0), f"exited with {process.returncode}"
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base}/health never answered 200")


def _assert_served(base: str, model: str) -> None:
    """The replicas saw `model` and the key: /v1 needs it, and the model is the one named."""
    assert httpx.get(base + "/v1/models", timeout=30).status_code == 401
    models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == [model]


def _stop(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _haproxy_pids() -> list[int]:
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if HAPROXY_PACKAGE_DIR in " ".join(process.info["cmdline"] or [])]


def _haproxy_environment() -> dict[str, str]:
    # Its stats page, Prometheus port and fallback proxy have fixed default ports: free ones, so
    # that the test runs beside any server on this machine. A stopping Ingress replica stays
    # reachable this long so that HAProxy drains it: 30 s by default, all spent at shutdown.
    return {HAPROXY_ENV_VAR: "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
            **{variable: str(free_port()) for variable in ("RAY_SERVE_HAPROXY_STATS_PORT",
               "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")}}


def _assert_haproxy_answers_as_the_reference(base: str, reference) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    raws = [raw for _, raw in photos()[:4]]
    body = httpx.post(base + "/v1/embeddings", json={"input": [{"image": data_uri(raw)} for raw in raws]},
                      headers=headers, timeout=120).json()
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert np.abs(got - reference.image_embeddings(raws)).max() < 1e-5

    # Concurrent requests, each with its own text: every answer must be its own request's.
    texts = [f"photo number {i}" for i in range(24)]

    def embed(text: str) -> list[float]:
        response = httpx.post(base + "/v1/embeddings", json={"input": [text]}, headers=headers, timeout=120)
        return response.json()["data"][0]["embedding"]

    with ThreadPoolExecutor(len(texts)) as pool:
        concurrent = np.array(list(pool.map(embed, texts)), dtype=np.float32)
    assert np.abs(concurrent - reference.text_embeddings(texts)).max() < 1e-5

    # Errors come from the Ingress, in OpenAI's shape, not from HAProxy.
    bad = httpx.post(base + "/v1/embeddings", json={"input": [{"image": "bm90IGFuIGltYWdl"}]},
                     headers=headers, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"
    big = httpx.post(base + "/v1/embeddings", json={"input": ["y" * (MAX_BODY_BYTES + 1)]}, headers=headers,
                     timeout=60)
    assert big.status_code == 413 and "(max_body_bytes)" in big.json()["error"]["message"]


@pytest.mark.own_cluster
def test_serve_run_that_starts_ray_passes_the_variables_behind_haproxy(tiny_checkpoint, reference, tmp_path):
    config, base = _config_file(tmp_path)
    env = _clean_environment(SIGLIP_MODEL=tiny_checkpoint, SIGLIP_API_KEYS=KEY, **_haproxy_environment())
    serve_run = subprocess.Popen(["serve", "run", str(config)], cwd=tmp_path, start_new_session=True, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    haproxy = []
    try:
        _wait_until_ready(base, serve_run)
        haproxy = _haproxy_pids()
        assert haproxy, "no HAProxy process: the graph ran behind the Python proxy"
        _assert_served(base, tiny_checkpoint)
        _assert_haproxy_answers_as_the_reference(base, reference)
    finally:
        _stop(serve_run, signal.SIGINT)  # as Ctrl-C: Serve shuts down, then the Ray it started
    assert [pid for pid in haproxy if psutil.pid_exists(pid)] == []


# Holds a local Ray cluster until killed, as `ray start --head` would, without `ray stop`
# (which stops every Ray cluster on the machine).
HOLD_CLUSTER = ("import ray, sys, time; ray.init(address=\"local\", num_cpus=4, include_dashboard=False); "
                "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(3600)")
DEPLOYED_CONFIG = ("import json, ray; ray.init(); from ray.serve.context import _connect; "
                   "print(json.dumps(_connect().get_serve_details()))")


@pytest.mark.own_cluster
def test_siglip_serve_passes_the_variables_to_a_running_cluster(tiny_checkpoint, tmp_path):
    config, base = _config_file(tmp_path)
    cluster = subprocess.Popen([sys.executable, "-c", HOLD_CLUSTER], env=_clean_environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = cluster.stdout.readline().strip()
        # Relative, from the user's folder: the replicas run elsewhere.
        model = os.path.relpath(tiny_checkpoint, tmp_path)
        env = _clean_environment(RAY_ADDRESS=address, SIGLIP_MODEL=model, SIGLIP_API_KEYS=KEY)
        subprocess.run(["siglip-serve", "--non-blocking", str(config)], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=120)
        _wait_until_ready(base, cluster)
        _assert_served(base, tiny_checkpoint)

        details = subprocess.run([sys.executable, "-c", DEPLOYED_CONFIG], env=env, capture_output=True,
                                 text=True, check=True, timeout=120).stdout.splitlines()[-1]
        assert KEY not in details and key_digest(KEY).hex() in details
        assert json.loads(details)["applications"]["siglip"]["deployed_app_config"]["runtime_env"][
            "env_vars"]["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"  # the file's own variables stay
    finally:
        _stop(cluster, signal.SIGTERM)
