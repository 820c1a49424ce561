"""Run by test_placement.py in a process of its own: a CPU-only head and two worker nodes that
advertise a fake GPU each, siglip-embed run against the cluster by address as on a real one,
and a JSON report of where its encoder actors ran and whether its vectors equal the reference.
Usage: python tests/support/bulk_placement_check.py CHECKPOINT"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(checkpoint: str) -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import pyarrow.parquet as pq
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    from deployments.bulk import BulkArgs, run
    from tests.support.photos import photos
    from tests.support.reference import Reference

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0,
                                                            "include_dashboard": False})
    gpu_nodes = {cluster.add_node(num_cpus=2, num_gpus=1).node_id for _ in range(2)}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        raws = {f"{index:02d}-{name}": raw for index, (name, raw) in enumerate(photos() * 2)}
        for name, raw in raws.items():
            (folder / name).write_bytes(raw)
        # float32: the fake GPUs leave the encoders on the CPU, where the reference is exact.
        summary = run(BulkArgs(model=checkpoint, input=str(folder), output=str(Path(scratch) / "out"),
                               address=cluster.address, dtype="float32", batch_size=4))
        rows = pq.read_table(Path(scratch) / "out").to_pylist()
    ids = sorted(raws)
    got = np.array([row["embedding"] for row in sorted(rows, key=lambda row: row["id"])], dtype=np.float32)
    encoders = [actor["Address"]["NodeID"] for actor in state.actors().values()
                if actor["ActorClassName"].startswith("MapWorker(MapBatches(_Encoder))")]
    print(json.dumps({"gpu_nodes": sorted(gpu_nodes), "encoder_nodes": encoders,
                      "head": cluster.head_node.node_id, "items": summary.items, "errors": summary.errors,
                      "max_abs_diff": float(np.abs(got - Reference(checkpoint).image_embeddings(
                          [raws[name] for name in ids])).max())}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
