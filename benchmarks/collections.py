"""The collections' store (deployments/core/collections.py, LanceDB on a local folder) at the
so400m embedding size: items added per second, search latency p50/p99 exact and with the
IVF-PQ index, and the index's recall@10 against exact search.

The vectors are synthetic: unit vectors around 1,000 random centres (an embedding space has
clusters; uniform random vectors are the worst case for any approximate index), and each query
is a stored vector moved by noise. Real SigLIP embeddings cannot be made here (no hub access).

    python -m benchmarks.collections --sizes 10000 100000 --out benchmarks/reports/collections_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

import numpy as np

from deployments.core.checkpoint import LogitParams
from deployments.core.collection_rules import Model
from deployments.core.collections import CollectionStore

DIMENSIONS = 1152
MODEL = Model("synthetic", "synthetic", DIMENSIONS)
BATCH = 1000  # items per add, as a bulk client would send them


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    centres = _unit(rng.normal(size=(1000, DIMENSIONS)))
    # Noise about as long as a centre: clusters that overlap, as real ones do.
    return _unit(centres[rng.integers(0, 1000, count)] + 0.03 * rng.normal(size=(count, DIMENSIONS)))


async def _searches(store: CollectionStore, name: str, queries: np.ndarray) -> tuple[list[float], list[list[str]]]:
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        matches = await store.search(name, MODEL, query, 10, {}, False)
        latencies.append(time.perf_counter() - started)
        found.append([match.id for match in matches])
    return latencies, found


def _ms(latencies: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1)}


async def measure(size: int, queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vectors = _vectors(rng, size)
    probes = _unit(vectors[rng.integers(0, size, queries)] + 0.02 * rng.normal(size=(queries, DIMENSIONS)))
    with tempfile.TemporaryDirectory() as folder:
        store = CollectionStore(folder, LogitParams(4.7, -16.5), index_threshold=10**12)
        await store.create("bench", MODEL)
        started = time.perf_counter()
        for start in range(0, size, BATCH):
            ids = [f"item-{i}" for i in range(start, min(size, start + BATCH))]
            await store.upsert("bench", MODEL, ids, vectors[start:start + BATCH], ["image"] * len(ids),
                               [None] * len(ids))
        add_s = time.perf_counter() - started
        await _searches(store, "bench", probes[:3])  # warm the page cache
        exact_latencies, exact = await _searches(store, "bench", probes)
        started = time.perf_counter()
        await store.build_index("bench")
        index_s = time.perf_counter() - started
        await _searches(store, "bench", probes[:3])
        ann_latencies, approximate = await _searches(store, "bench", probes)
    recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact)])
    return {"items": size, "dimensions": DIMENSIONS, "queries": queries,
            "add_items_per_s": round(size / add_s), "exact": _ms(exact_latencies),
            "ivf_pq": {**_ms(ann_latencies), "build_s": round(index_s, 1), "recall_at_10": round(float(recall), 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out")
    options = parser.parse_args()
    results = [asyncio.run(measure(size, options.queries)) for size in options.sizes]
    text = json.dumps({"benchmark": "collections", "results": results}, indent=2)
    print(text)
    if options.out:
        with open(options.out, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
