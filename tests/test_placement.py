"""On a multi-node cluster the encoders land on GPU nodes, images cross nodes between the
preprocessor and the encoders unharmed, an encoder handed a GPU that torch cannot use runs on
the CPU and says so, and serve_config.yaml unedited gets the sizing for GPUs; siglip-embed on
the same cluster runs an encoder per GPU. One cluster, started once for both tests."""

from __future__ import annotations

import pytest

from deployments.sizing import Cluster, size_graph
from tests.support.apps import USER_CONFIG_MODELS, run_check_script


@pytest.fixture(scope="module")
def report(tiny_checkpoint) -> dict:
    return run_check_script("multinode_check.py", tiny_checkpoint, "gpu_nodes")


@pytest.mark.own_cluster
def test_encoders_sit_on_gpu_nodes_and_cross_node_requests_are_correct(report):
    gpu_nodes = set(report["gpu_nodes"])
    for encoder in ("VisionEncoder", "TextEncoder"):
        assert len(report["nodes"][encoder]) == 2
        assert set(report["nodes"][encoder]) <= gpu_nodes, (encoder, report)
    assert report["nodes"]["ImagePreprocessor"] == [report["head"]]  # so every image crossed nodes
    assert report["max_abs_diff"] < 1e-5
    assert report["cpu_fallback_log_files"] >= 1  # "Ray assigned GPU ids ... cannot use CUDA"

    # serve_config.yaml unedited (where the check does not pin a stage) is sized for GPUs.
    sizing = size_graph(Cluster(cpus=6, gpus=4, memory_bytes=0), 1.0, None)
    for stage in ("Ingress", "ScoreFusion"):
        deployed = report["deployed"][stage]
        assert deployed["autoscaling_config"] is not None
        for key, value in sizing.stages[stage]["autoscaling_config"].items():
            assert deployed["autoscaling_config"][key] == value, (stage, key)
        assert deployed["ray_actor_options"]["num_cpus"] == sizing.stages[stage]["ray_actor_options"]["num_cpus"]
    assert report["deployed"]["Ingress"]["max_ongoing_requests"] == sizing.stages["Ingress"]["max_ongoing_requests"]
    for encoder in ("VisionEncoder", "TextEncoder"):
        assert report["deployed"][encoder]["ray_actor_options"]["num_gpus"] == 1
        # A fake GPU that torch cannot use: the replicas run on the CPU, with the CPU's batches.
        assert report["batch_limits"][encoder] == [USER_CONFIG_MODELS[encoder]().max_batch_size_on("cpu")]


@pytest.mark.own_cluster
def test_bulk_encoders_sit_one_per_gpu_on_gpu_nodes(report):
    """siglip-embed --address on the same cluster: an encoder actor per GPU (two on each GPU
    node), and vectors still the reference's."""
    bulk = report["bulk"]
    assert sorted(bulk["encoder_nodes"]) == sorted(report["gpu_nodes"] * 2), report
    assert (bulk["items"], bulk["errors"]) == (28, 0)
    assert bulk["max_abs_diff"] < 1e-5
