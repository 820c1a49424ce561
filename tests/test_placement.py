"""On a multi-node cluster the encoders land on GPU nodes, images cross nodes between the
preprocessor and the encoders unharmed, and an encoder handed a GPU that torch cannot use runs
on the CPU and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_encoders_sit_on_gpu_nodes_and_cross_node_requests_are_correct(tiny_checkpoint):
    script = Path(__file__).with_name("multinode_check.py")
    run = subprocess.run([sys.executable, str(script), tiny_checkpoint], capture_output=True, text=True,
                         timeout=480)
    assert run.returncode == 0, run.stderr[-3000:]
    # Ray may print its own lines after ours; the report is the one JSON line we print.
    report = json.loads(next(line for line in run.stdout.splitlines() if line.startswith('{"gpu_nodes"')))
    gpu_nodes = set(report["gpu_nodes"])
    for encoder in ("VisionEncoder", "TextEncoder"):
        assert len(report["nodes"][encoder]) == 2
        assert set(report["nodes"][encoder]) <= gpu_nodes, (encoder, report)
    assert report["nodes"]["ImagePreprocessor"] == [report["head"]]  # so every image crossed nodes
    assert report["max_abs_diff"] < 1e-5
    assert report["cpu_fallback_log_files"] >= 1  # "Ray assigned GPU ids ... cannot use CUDA"
