"""On a multi-node cluster the encoders land on GPU nodes, images cross nodes between the
preprocessor and the encoders unharmed, and an encoder handed a GPU that torch cannot use runs
on the CPU and says so."""

from __future__ import annotations

import pytest

from tests.support.apps import run_check_script


@pytest.mark.own_cluster
def test_encoders_sit_on_gpu_nodes_and_cross_node_requests_are_correct(tiny_checkpoint):
    report = run_check_script("multinode_check.py", tiny_checkpoint, "gpu_nodes")
    gpu_nodes = set(report["gpu_nodes"])
    for encoder in ("VisionEncoder", "TextEncoder"):
        assert len(report["nodes"][encoder]) == 2
        assert set(report["nodes"][encoder]) <= gpu_nodes, (encoder, report)
    assert report["nodes"]["ImagePreprocessor"] == [report["head"]]  # so every image crossed nodes
    assert report["max_abs_diff"] < 1e-5
    assert report["cpu_fallback_log_files"] >= 1  # "Ray assigned GPU ids ... cannot use CUDA"
