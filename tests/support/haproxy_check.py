"""Run by test_haproxy_ingress.py in a process of its own (Serve reads RAY_SERVE_ENABLE_HA_PROXY
when its controller starts, so the test session's cluster cannot switch): the graph deployed from
serve_config.yaml behind Ray's HAProxy ingress, as docs/operations.md's "HAProxy in front" section runs it,
and a JSON report of what came back. Usage: python tests/support/haproxy_check.py CHECKPOINT"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deployments.testing.local_cluster import HAPROXY_PACKAGE_DIR, free_port, serve_locally  # noqa: E402

MAX_BODY_BYTES = 8 * 2**20  # above the four photos' request


def haproxy_pids() -> list[int]:
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if HAPROXY_PACKAGE_DIR in " ".join(process.info["cmdline"] or [])]


def main(checkpoint: str) -> None:
    from tests.support.photos import data_uri, photos
    from tests.support.reference import Reference

    # HAProxy's stats page, its Prometheus port and the fallback proxy have fixed default ports:
    # free ones, so that the check runs beside any server on this machine.
    for variable in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                     "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
        os.environ[variable] = str(free_port())
    # A stopping Ingress replica stays reachable this long so that HAProxy takes it out of
    # rotation first: 30 s by default, all of it spent at this check's shutdown.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["limits"] = {"max_body_bytes": MAX_BODY_BYTES}

    raws = [raw for _, raw in photos()[:4]]
    reference = Reference(checkpoint)
    report: dict = {}
    with serve_locally(config, checkpoint, num_cpus=4, haproxy=True) as base:
        report["haproxy_pids"] = haproxy_pids()
        report["health"] = httpx.get(base + "/health", timeout=30).status_code

        body = httpx.post(base + "/v1/embeddings", json={"input": [{"image": data_uri(r)} for r in raws]},
                          timeout=120).json()
        got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        report["image_max_abs_diff"] = float(np.abs(got - reference.image_embeddings(raws)).max())

        # Concurrent requests, each with its own text: every answer must be its own request's.
        texts = [f"photo number {i}" for i in range(24)]

        def embed(text: str) -> list[float]:
            response = httpx.post(base + "/v1/embeddings", json={"input": [text]}, timeout=120)
            return response.json()["data"][0]["embedding"]

        with ThreadPoolExecutor(len(texts)) as pool:
            concurrent = np.array(list(pool.map(embed, texts)), dtype=np.float32)
        report["concurrent_max_abs_diff"] = float(np.abs(concurrent - reference.text_embeddings(texts)).max())

        # Errors come from the Ingress, in OpenAI's shape, not from HAProxy.
        bad = httpx.post(base + "/v1/embeddings", json={"input": [{"image": "bm90IGFuIGltYWdl"}]}, timeout=60)
        big = httpx.post(base + "/v1/embeddings", json={"input": ["y" * (MAX_BODY_BYTES + 1)]}, timeout=60)
        report["errors"] = {name: {"status": response.status_code, "body": response.json()}
                            for name, response in (("undecodable", bad), ("too_big", big))}
    report["haproxy_pids_after_shutdown"] = [pid for pid in report["haproxy_pids"] if psutil.pid_exists(pid)]
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
