"""Run by test_placement.py in a process of its own (a multi-node cluster cannot share the test
session's Ray): a CPU-only head and two worker nodes that advertise two fake GPUs each. On them,
first the graph deployed from serve_config.yaml, then siglip-embed run against the cluster by
address as on a real one (one cluster for both: each costs half a minute to start on 2 cores).
Prints a JSON report of where each replica and encoder actor landed and whether the answers
equal the reference. Usage: python tests/support/multinode_check.py CHECKPOINT"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(checkpoint: str) -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["SIGLIP_MODEL"] = checkpoint  # set before the nodes start: their workers inherit it
    import ray
    from ray import serve
    from ray._private import state
    from ray.cluster_utils import Cluster
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from deployments.testing.local_cluster import deploy_and_wait, free_port
    from tests.support.photos import data_uri, photos
    from tests.support.reference import Reference

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "resources": {"cpu_head": 1}, "include_dashboard": False})
    gpu_nodes = {cluster.add_node(num_cpus=2, num_gpus=2).node_id for _ in range(2)}
    ray.init(address=cluster.address, log_to_driver=False)

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = config["applications"][0]
    for deployment in app["deployments"]:
        if deployment["name"] in ("VisionEncoder", "TextEncoder"):
            deployment["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 2}
        if deployment["name"] == "ImagePreprocessor":
            # Pinned to the CPU head, so every image crosses nodes on its way to an encoder.
            deployment["ray_actor_options"] = {"num_cpus": 0.5, "resources": {"cpu_head": 0.1}}
    port = free_port()
    schema = ServeDeploySchema.model_validate({**config, "http_options": {"host": "127.0.0.1", "port": port}})
    client = serve_api.serve_start(http_options=schema.http_options.model_dump())
    deploy_and_wait(client, schema, timeout_s=240)

    nodes: dict[str, list[str]] = {}
    for actor in state.actors().values():
        if actor["State"] == "ALIVE" and actor["ActorClassName"].startswith(f"ServeReplica:{app['name']}:"):
            stage = actor["ActorClassName"].rsplit(":", 1)[1]
            nodes.setdefault(stage, []).append(actor["Address"]["NodeID"])

    raws = [raw for _, raw in photos()[:6]]
    reference = Reference(checkpoint)
    base = f"http://127.0.0.1:{port}"
    max_diffs = []
    for _ in range(4):  # several rounds, so that both replicas of each encoder answer
        body = httpx.post(base + "/v1/embeddings", json={"input": [{"image": data_uri(r)} for r in raws]},
                          timeout=120).json()
        got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        max_diffs.append(float(np.abs(got - reference.image_embeddings(raws)).max()))
        body = httpx.post(base + "/v1/classify", json={"input": [data_uri(r) for r in raws], "labels": ["a", "b"]},
                          timeout=120).json()
        scores = np.array([[{p["label"]: p["score"] for p in item["predictions"]}[label] for label in ("a", "b")]
                           for item in body["data"]])
        expected = reference.scores(raws, ["This is a photo of a.", "This is a photo of b."])
        max_diffs.append(float(np.abs(scores - expected).max()))

    from ray.serve.context import _get_global_client
    from deployments.testing.local_cluster import ask_each_replica

    running = _get_global_client().get_serve_details()["applications"][app["name"]]["deployments"]
    deployed = {name: {key: details["deployment_config"].get(key)
                       for key in ("num_replicas", "autoscaling_config", "max_ongoing_requests", "ray_actor_options")}
                for name, details in running.items()}
    batch_limits = {name: sorted({c["batcher_max_batch_size"] for c in ask_each_replica(
        app["name"], name, lambda encoder: encoder.effective_config())}) for name in ("VisionEncoder", "TextEncoder")}

    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    cpu_fallback_lines = sum("cannot use CUDA" in path.read_text(errors="ignore")
                             for path in session_logs.rglob("*") if path.is_file())
    serve.shutdown()
    ray.shutdown()  # siglip-embed connects by itself, as from a user's shell
    bulk = _bulk_job(cluster.address, checkpoint, reference)
    print(json.dumps({"gpu_nodes": sorted(gpu_nodes), "head": cluster.head_node.node_id, "nodes": nodes,
                      "max_abs_diff": max(max_diffs), "cpu_fallback_log_files": cpu_fallback_lines,
                      "deployed": deployed, "batch_limits": batch_limits, "bulk": bulk}, default=str))
    ray.shutdown()
    cluster.shutdown()


def _bulk_job(address: str, checkpoint: str, reference) -> dict:
    """siglip-embed over 28 photos: where its encoder actors ran, and how far its vectors are
    from the reference's."""
    import pyarrow.parquet as pq
    from ray._private import state

    from deployments.bulk import BulkArgs, run
    from tests.support.photos import photos

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        raws = {f"{index:02d}-{name}": raw for index, (name, raw) in enumerate(photos() * 2)}
        for name, raw in raws.items():
            (folder / name).write_bytes(raw)
        # float32: the fake GPUs leave the encoders on the CPU, where the reference is exact.
        summary = run(BulkArgs(model=checkpoint, input=str(folder), output=str(Path(scratch) / "out"),
                               address=address, dtype="float32", batch_size=4))
        rows = sorted(pq.read_table(Path(scratch) / "out").to_pylist(), key=lambda row: row["id"])
    got = np.array([row["embedding"] for row in rows], dtype=np.float32)
    encoders = [actor["Address"]["NodeID"] for actor in state.actors().values()
                if actor["ActorClassName"].startswith("MapWorker(MapBatches(_Encoder))")]
    return {"encoder_nodes": encoders, "items": summary.items, "errors": summary.errors,
            "max_abs_diff": float(np.abs(got - reference.image_embeddings([raws[name] for name in sorted(raws)])).max())}


if __name__ == "__main__":
    main(sys.argv[1])
