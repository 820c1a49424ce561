"""The encoders as a replica serves them (with the rewrites of deployments/core/rewrites.py)
against the same encoders on the towers as the checkpoint comes, in one process, on the CPU
(benchmarks/gpu_encoders.py is the GPU's). The two take turns call by call and CPU time is
counted, so that a shared machine's drift, which moves whole runs by 20%, falls on both alike.

    python -m benchmarks.served_towers --preset base

Random-weight checkpoint (made on first use): the timings are the real model's, the vectors
meaningless. Writes benchmarks/results/served_towers.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, SiglipTextModel, SiglipVisionModel

from benchmarks.serving import REPO, preset_checkpoint
from deployments.core.checkpoint import ImageSettings
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore, load_tower


def encoder_pair(kind: str, model: str):
    """(as the checkpoint comes, as served) for one encoder, and a batch maker for it."""
    if kind == "vision":
        settings = ImageSettings.from_pretrained(model)
        checkpoint = VisionEncoderCore(load_tower(SiglipVisionModel, model, "cpu", "float32"), settings)
        served = VisionEncoderCore.from_pretrained(model, "cpu", "float32")
        rng = np.random.default_rng(0)
        return checkpoint, served, lambda n: rng.integers(0, 256, (n, settings.height, settings.width, 3),
                                                          dtype=np.uint8)
    tokenizer = AutoTokenizer.from_pretrained(model)
    checkpoint = TextEncoderCore(load_tower(SiglipTextModel, model, "cpu", "float32"), tokenizer)
    served = TextEncoderCore.from_pretrained(model, "cpu", "float32")
    return checkpoint, served, lambda n: [f"a photo of thing number {i}" for i in range(n)]


def compare(checkpoint, served, batch, rounds: int) -> dict:
    """CPU ms per item of each, and the median over rounds of served's time over checkpoint's."""
    times = {"checkpoint": [], "served": []}
    largest_difference = float(np.abs(checkpoint.encode(batch).vectors - served.encode(batch).vectors).max())
    for round_ in range(rounds):
        pair = [("checkpoint", checkpoint), ("served", served)]
        for name, core in pair if round_ % 2 == 0 else pair[::-1]:
            started = time.process_time()
            core.encode(batch)
            times[name].append(time.process_time() - started)
    ratios = sorted(s / c for s, c in zip(times["served"], times["checkpoint"]))
    return {**{f"{name}_ms_per_item": round(statistics.median(t) / len(batch) * 1e3, 1) for name, t in times.items()},
            "served_over_checkpoint": round(statistics.median(ratios), 3),
            "quartiles": [round(ratios[len(ratios) // 4], 3), round(ratios[(3 * len(ratios)) // 4], 3)],
            "max_abs_unit_vector_diff": largest_difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a CPU replica uses 1)")
    parser.add_argument("--encoders", nargs="+", choices=["vision", "text"], default=["vision", "text"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=10, help="turns each form takes per batch size")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "served_towers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = preset_checkpoint(args.preset)
    rows = []
    for kind in args.encoders:
        checkpoint, served, make_batch = encoder_pair(kind, model)
        for size in args.batch_sizes:
            rows.append({"encoder": kind, "batch_size": size,
                         **compare(checkpoint, served, make_batch(size), args.rounds)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "random_weights": True,
                                    "torch": torch.__version__, "threads": args.threads,
                                    "rounds": args.rounds, "rows": rows}, indent=2))
    print("\n| encoder | batch | checkpoint ms/item | served ms/item | served / checkpoint (quartiles) |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['encoder']} | {row['batch_size']} | {row['checkpoint_ms_per_item']} | "
              f"{row['served_ms_per_item']} | {row['served_over_checkpoint']} ({row['quartiles'][0]}-"
              f"{row['quartiles'][1]}) |")


if __name__ == "__main__":
    main()
