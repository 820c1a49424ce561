"""The documented SIGLIP_* variables reach the replicas both ways a user starts the service:
`serve run` starting Ray itself, and `siglip-serve` against a Ray cluster already running
(`serve run` alone cannot carry them there: it sends Ray only the file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.gate import key_digest
from deployments.launch import replica_environment, with_environment
from deployments.testing.local_cluster import free_port
from tests.conftest import SERVE_CONFIG

KEY = "launch-test-key"


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


@pytest.mark.own_cluster
def test_serve_run_that_starts_ray_passes_the_variables(tiny_checkpoint, tmp_path):
    config, base = _config_file(tmp_path)
    serve_run = subprocess.Popen(["serve", "run", str(config)], cwd=tmp_path, start_new_session=True,
                                 env=_clean_environment(SIGLIP_MODEL=tiny_checkpoint, SIGLIP_API_KEYS=KEY),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_ready(base, serve_run)
        _assert_served(base, tiny_checkpoint)
    finally:
        _stop(serve_run, signal.SIGINT)  # as Ctrl-C: Serve shuts down, then the Ray it started


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
