"""What a burst of clients that give up leaves behind: `--clients` closed-loop clients send one
workload for `--seconds`, then all disconnect at once; one more request is then timed, and
each encoder's forward passes are counted from the disconnect until that request is answered
and the encoders fall idle. Work done after the disconnect for anyone but that request was
done for no one.

    python -m benchmarks.abandoned_requests --workload image_embeddings_8

The checkpoint has RANDOM weights (the hub cannot be reached): outputs are meaningless; only
the timings and counts count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from benchmarks.load import closed_loop
from benchmarks.serving import (add_graph_arguments, forward_passes_between, graph_batch_stats,
                                preset_checkpoint, ray_cpu_seconds, realistic_jpegs, send, serve_config,
                                serve_graph, wait_until_idle, workloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--workload", default="image_embeddings_8",
                        choices=[w.name for w in workloads([""])])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8)
    add_graph_arguments(parser)
    args = parser.parse_args()

    config = serve_config()
    model = preset_checkpoint(args.preset)
    workload = {w.name: w for w in workloads(realistic_jpegs())}[args.workload]

    with serve_graph(config, model, args) as url:
        send(url, workload, timeout_s=600).raise_for_status()  # unmeasured: pays for lazy set-up
        wait_until_idle(ray_cpu_seconds)
        load = asyncio.run(closed_loop(url, workload.path, workload.next_body, args.clients,
                                       args.seconds, drain_s=0))
        at_disconnect = graph_batch_stats()
        started = time.perf_counter()
        next_request = send(url, workload, timeout_s=600)
        next_request_s = time.perf_counter() - started
        idle_after_s = wait_until_idle(ray_cpu_seconds, timeout_s=600)
        after = graph_batch_stats()
    print(json.dumps({
        "workload": args.workload, "preset": args.preset, "clients": args.clients,
        "seconds_before_disconnect": args.seconds, "answered_before": len(load.latencies_s),
        "disconnected": load.cut, "next_request_status": next_request.status_code,
        "next_request_s": round(next_request_s, 1), "idle_after_s": round(idle_after_s, 1),
        "encoded_after_disconnect": {encoder: None if passes is None else
                                     sum(size * count for size, count in passes.items())
                                     for encoder, passes in forward_passes_between(at_disconnect, after).items()},
        "next_request_needs": {"VisionEncoder": workload.images_to_encode,
                               "TextEncoder": workload.texts_to_encode},
    }))


if __name__ == "__main__":
    main()
