"""The encoders as a replica serves them (with the rewrites of deployments/core/rewrites.py)
against a baseline, in one process, on the CPU (benchmarks/gpu_encoders.py is the GPU's): the
same encoders on the towers as the checkpoint comes, or, with `--dtype bfloat16 --baseline
float32`, the served encoders in float32. The two take turns call by call and CPU time is
counted, so that a shared machine's drift, which moves whole runs by 20%, falls on both alike.

    python -m benchmarks.served_towers --preset base
    python -m benchmarks.served_towers --preset base --dtype bfloat16 --baseline float32

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
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore
from deployments.core.loading import load_tower


def encoder_pair(kind: str, model: str, dtype: str, baseline: str):
    """(the baseline, as served in `dtype`) for one encoder, and a batch maker for it. The
    baseline is the checkpoint's tower as it comes, in `dtype`, or the served encoder in
    float32."""
    if kind == "vision":
        served_core = VisionEncoderCore
        settings = ImageSettings.from_pretrained(model)
        rng = np.random.default_rng(0)

        def make_batch(n: int) -> np.ndarray:
            return rng.integers(0, 256, (n, settings.height, settings.width, 3), dtype=np.uint8)

        def as_checkpoint_comes() -> VisionEncoderCore:
            return VisionEncoderCore(load_tower(SiglipVisionModel, model, "cpu", dtype), settings)
    else:
        served_core = TextEncoderCore
        tokenizer = AutoTokenizer.from_pretrained(model)

        def make_batch(n: int) -> list[str]:
            return [f"a photo of thing number {i}" for i in range(n)]

        def as_checkpoint_comes() -> TextEncoderCore:
            return TextEncoderCore(load_tower(SiglipTextModel, model, "cpu", dtype), tokenizer)
    baseline_core = (as_checkpoint_comes() if baseline == "checkpoint"
                     else served_core.from_pretrained(model, "cpu", "float32"))
    return baseline_core, served_core.from_pretrained(model, "cpu", dtype), make_batch


def compare(baseline, served, batch, rounds: int) -> dict:
    """CPU ms per item of each, and the median over rounds of served's time over the baseline's."""
    times = {"baseline": [], "served": []}
    largest_difference = float(np.abs(baseline.encode(batch).vectors - served.encode(batch).vectors).max())
    for round_ in range(rounds):
        pair = [("baseline", baseline), ("served", served)]
        for name, core in pair if round_ % 2 == 0 else pair[::-1]:
            started = time.process_time()
            core.encode(batch)
            times[name].append(time.process_time() - started)
    ratios = sorted(s / c for s, c in zip(times["served"], times["baseline"]))
    return {**{f"{name}_ms_per_item": round(statistics.median(t) / len(batch) * 1e3, 1) for name, t in times.items()},
            "served_over_baseline": round(statistics.median(ratios), 3),
            "quartiles": [round(ratios[len(ratios) // 4], 3), round(ratios[(3 * len(ratios)) // 4], 3)],
            "max_abs_unit_vector_diff": largest_difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a CPU replica uses 1)")
    parser.add_argument("--encoders", nargs="+", choices=["vision", "text"], default=["vision", "text"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=10, help="turns each form takes per batch size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the served encoders' dtype (bfloat16: fast on CPUs with AMX)")
    parser.add_argument("--baseline", default="checkpoint", choices=["checkpoint", "float32"],
                        help="timed against the checkpoint's towers as they come, in the same dtype, "
                             "or against the served encoders in float32")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "served_towers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = preset_checkpoint(args.preset)
    rows = []
    for kind in args.encoders:
        baseline, served, make_batch = encoder_pair(kind, model, args.dtype, args.baseline)
        for size in args.batch_sizes:
            rows.append({"encoder": kind, "batch_size": size,
                         **compare(baseline, served, make_batch(size), args.rounds)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "random_weights": True, "dtype": args.dtype,
                                    "baseline": args.baseline,
                                    "torch": torch.__version__, "threads": args.threads,
                                    "rounds": args.rounds, "rows": rows}, indent=2))
    print(f"\n| encoder | batch | {args.baseline} ms/item | served ({args.dtype}) ms/item | served / {args.baseline} (quartiles) |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['encoder']} | {row['batch_size']} | {row['baseline_ms_per_item']} | "
              f"{row['served_ms_per_item']} | {row['served_over_baseline']} ({row['quartiles'][0]}-"
              f"{row['quartiles'][1]}) |")


if __name__ == "__main__":
    main()
