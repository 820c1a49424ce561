"""What serving itself costs per request, one request at a time, for requests whose compute is
next to nothing (a 64-pixel PNG, a text the cache holds, labels the cache holds), and with
`--photos` for one photograph of each size the serving benchmark sends (1-12 megapixels), to
show where the decode's cost outweighs the hops:

  floor  - the smallest Serve app (benchmarks/serve_floor.py), beside the graph on the same
           cluster: the proxy to one replica, the same reading a small body, the same plus
           one handle call
  graph  - this graph, deployed from serve_config.yaml as benchmarks/serving.py runs it
  naive  - the one-process FastAPI server of benchmarks/naive_server.py

Systems take turns, round after round, so that the machine's drift reaches all of them.
Writes hop_latency.json and hop_latency.md to --out.

    python -m benchmarks.hop_latency --out benchmarks/results

The checkpoint has RANDOM weights (the hub cannot be reached): outputs are meaningless; only
the timings count.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.serving import (MEGAPIXELS, REPO, add_graph_arguments, graph_setting, machine, naive_server,
                                preset_checkpoint, ray_cpu_seconds, realistic_jpegs, serve_config, serve_graph,
                                wait_until_idle, write_report)

FLOOR_APP = {"name": "floor", "route_prefix": "/floor", "import_path": "benchmarks.serve_floor:app"}


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def requests(photos: bool = False) -> dict[str, tuple[str, dict | None]]:
    """Name -> (path, JSON body, or None for a GET)."""
    png = [{"image": _png_data_uri()}]
    chosen = {"GET /health/live": ("/health/live", None),
              "one text, in the graph's cache": ("/v1/embeddings", {"input": ["a photo of a cat"]}),
              "one 64-pixel PNG": ("/v1/embeddings", {"input": png}),
              "classify a 64-pixel PNG, cached labels": ("/v1/classify", {"input": png, "labels": ["cat", "dog"]})}
    if photos:
        for megapixels, photo in zip(MEGAPIXELS, realistic_jpegs()):
            chosen[f"one {megapixels}-megapixel JPEG"] = ("/v1/embeddings", {"input": [{"image": photo}]})
    return chosen


FLOOR_REQUESTS = {"proxy to one replica": ("/floor/health", None),
                  "proxy to one replica, reading a small body": ("/floor/body", {"input": ["a photo of a cat"]}),
                  "proxy to one replica, one handle call": ("/floor/hop", None)}


def time_requests(base_url: str, chosen: dict[str, tuple[str, dict | None]], count: int,
                  warmup: int = 5) -> dict[str, list[float]]:
    """Milliseconds of each of `count` sequential requests, after `warmup` untimed ones."""
    samples = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for name, (path, body) in chosen.items():
            timings = []
            for index in range(warmup + count):
                started = time.perf_counter()
                response = client.get(path) if body is None else client.post(path, json=body)
                elapsed_ms = (time.perf_counter() - started) * 1e3
                response.raise_for_status()
                if index >= warmup:
                    timings.append(elapsed_ms)
            samples[name] = timings
    return samples


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; checkpoint `{report['preset']}` (random weights); "
             f"graph: {report['graph_encoders']}; {report['requests']} sequential requests per row "
             f"and round, {report['rounds']} rounds.", "",
             f"Command: `{report['command']}`", "",
             "| system | request | p50 ms | p50 per round |", "|---|---|---:|---|"]
    for row in report["rows"]:
        per_round = ", ".join(f"{value:.1f}" for value in row["p50_ms_per_round"])
        lines.append(f"| {row['system']} | {row['request']} | {row['p50_ms']:.1f} | {per_round} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "so400m"])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", action="store_true",
                        help="also time one photograph of each size, 1-12 megapixels (JPEG)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    add_graph_arguments(parser)
    args = parser.parse_args()

    model = preset_checkpoint(args.preset)
    config = serve_config()
    config["applications"].append(FLOOR_APP)
    graph_requests = requests(args.photos)
    naive_requests = {name: request for name, request in graph_requests.items() if request[1] is not None}

    samples: dict[tuple[str, str], list[list[float]]] = {}
    # Deployed as benchmarks/serving.py deploys the graph.
    with serve_graph(config, model, args) as graph_url, naive_server(model) as (naive_url, _):
        # Replicas keep importing and warming up for a while after Serve reports them running.
        wait_until_idle(ray_cpu_seconds)
        for _ in range(args.rounds):
            for system, url, chosen in [("floor", graph_url, FLOOR_REQUESTS), ("graph", graph_url, graph_requests),
                                        ("naive", naive_url, naive_requests)]:
                for name, timings in time_requests(url, chosen, args.requests).items():
                    samples.setdefault((system, name), []).append(timings)

    rows = [{"system": system, "request": name,
             "p50_ms": round(statistics.median([t for timings in rounds for t in timings]), 1),
             "p50_ms_per_round": [round(statistics.median(timings), 1) for timings in rounds]}
            for (system, name), rounds in samples.items()]
    report = {"machine": machine(), "graph_encoders": graph_setting(args), "preset": args.preset,
              "requests": args.requests,
              "rounds": args.rounds, "command": "python -m benchmarks.hop_latency " + " ".join(sys.argv[1:]),
              "rows": rows}
    write_report(args.out, "hop_latency", report, markdown(report))


if __name__ == "__main__":
    main()
