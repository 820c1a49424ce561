"""Encoder throughput on one GPU, without Ray: the project's own VisionEncoderCore and
TextEncoderCore (the code the deployments run), so400m shapes, bfloat16, batch sizes 1-256,
eager and torch.compile; plus the largest bfloat16-vs-float32 difference in classify scores.

    python benchmarks/gpu_encoders.py --out results/gpu_encoders.json

The model has RANDOM weights built on the GPU (the hub cannot be reached): throughput equals
the real model's, since the compute is the same; the scores themselves are meaningless. The
bf16-vs-fp32 check runs on real photographs (scikit-image's samples).
Runs in about 5 minutes on an H100; `--preset tiny --device cpu` checks the script anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.core import scoring  # noqa: E402
from deployments.core.checkpoint import ImageSettings, LogitParams  # noqa: E402
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore  # noqa: E402
from deployments.core.images import prepare  # noqa: E402
from deployments.core.random_checkpoint import build_config, build_model, build_tokenizer  # noqa: E402

# so400m's cost (open_clip's profile); MFU figures hold for the so400m preset only.
GFLOP_PER_IMAGE = 670.35  # 384x384, 729 patches
GFLOP_PER_TEXT = 53.13    # 64 tokens
PEAK_BF16_TFLOPS = 989.0  # H100 SXM / H200 dense bf16
BATCH_SIZES = [1, 8, 32, 64, 128, 256]
SETTINGS = ImageSettings(height=0, width=0, resample=3, rescale_factor=1 / 255,
                         image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run, device: torch.device, min_seconds: float, warmup: int = 2) -> float:
    """Median seconds per call, after warm-up, over at least 3 calls and `min_seconds`."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times: list[float] = []
    while len(times) < 3 or sum(times) < min_seconds:
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sweep(kind: str, core, make_batch, gflop_per_item: float, device, compiled: str | bool,
          min_seconds: float, batch_sizes: list[int]) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        batch = make_batch(batch_size)
        seconds = measure(lambda: core.encode(batch), device, min_seconds)
        per_second = batch_size / seconds
        rows.append({"encoder": kind, "compiled": compiled or "eager", "batch_size": batch_size,
                     "items_per_s": round(per_second, 1), "ms_per_batch": round(seconds * 1e3, 2),
                     "mfu": round(per_second * gflop_per_item / (PEAK_BF16_TFLOPS * 1e3), 4)})
        print(f"{kind:6} {compiled or 'eager':7} batch={batch_size:4}  {per_second:9.1f} items/s  "
              f"{seconds * 1e3:8.2f} ms  MFU {rows[-1]['mfu']:.3f}", flush=True)
    return rows


def attention_backend(name: str):
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return nullcontext() if name == "default" else sdpa_kernel(backends[name])


def real_photos(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "retina",
             "immunohistochemistry"]
    settings = ImageSettings(size, size, SETTINGS.resample, SETTINGS.rescale_factor,
                             SETTINGS.image_mean, SETTINGS.image_std)
    return np.stack([prepare(Image.fromarray(getattr(data, name)()), settings) for name in names])


def precision_drift(model_fp32, tokenizer, device) -> dict:
    """Largest |score(bf16) - score(fp32)| on classify, real photos x 10 label prompts."""
    import copy

    labels = ["cat", "dog", "astronaut", "rocket", "cup of coffee", "galaxy", "eye", "tissue",
              "man with a camera", "city street"]
    prompts = [f"This is a photo of {label}." for label in labels]
    params = LogitParams(model_fp32.logit_scale.item(), model_fp32.logit_bias.item())
    pixels = real_photos(model_fp32.config.vision_config.image_size)
    settings = ImageSettings(pixels.shape[1], pixels.shape[2], SETTINGS.resample,
                             SETTINGS.rescale_factor, SETTINGS.image_mean, SETTINGS.image_std)
    results = {}
    for name, model in (("float32", model_fp32), ("bfloat16", copy.deepcopy(model_fp32).to(torch.bfloat16))):
        images = VisionEncoderCore(model.vision_model, settings).encode(pixels)
        texts = TextEncoderCore(model.text_model, tokenizer).encode(prompts)
        results[name] = (images.vectors, texts.vectors,
                         scoring.pair_scores(images.vectors, texts.vectors, params))
        del model
    (image32, text32, score32), (image16, text16, score16) = results["float32"], results["bfloat16"]
    cos_diff = np.abs(image16 @ text16.T - image32 @ text32.T).max()
    return {"max_abs_score_diff": float(np.abs(score16 - score32).max()),
            "max_abs_cosine_diff": float(cos_diff),
            "score_bound_note": "|d score| <= 0.25 * exp(logit_scale) * |d cos|; "
                                f"this checkpoint's exp(logit_scale) = {np.exp(params.logit_scale):.1f}",
            "images": int(len(pixels)), "labels": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="so400m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per point")
    parser.add_argument("--compile", choices=["dynamic", "static", "none"], default="dynamic",
                        help="besides eager: torch.compile with a dynamic batch dimension, or "
                             "specialized to each batch size, or not at all")
    parser.add_argument("--encoders", nargs="+", choices=["vision", "text"], default=["vision", "text"])
    parser.add_argument("--no-drift", action="store_true", help="skip the bf16-vs-fp32 check")
    parser.add_argument("--sdpa", nargs="+", default=["default"],
                        choices=["default", "flash", "cudnn", "efficient"],
                        help="attention kernels to compare (eager only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_encoders.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # a true float32 reference for the drift check
    torch.backends.cuda.matmul.allow_tf32 = False

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(Path(scratch))
    model = build_model(build_config(args.preset, len(tokenizer)), device=device)
    print(f"RANDOM-WEIGHT {args.preset} model built on {device} in "
          f"{time.perf_counter() - started:.1f}s", flush=True)

    drift = None if args.no_drift else precision_drift(model, tokenizer, device)
    if drift:
        print(f"bf16 vs fp32: max |score diff| {drift['max_abs_score_diff']:.2e}, "
              f"max |cos diff| {drift['max_abs_cosine_diff']:.2e}", flush=True)

    model = model.to(torch.bfloat16)
    vision_config = model.config.vision_config
    settings = ImageSettings(vision_config.image_size, vision_config.image_size, SETTINGS.resample,
                             SETTINGS.rescale_factor, SETTINGS.image_mean, SETTINGS.image_std)
    rng = np.random.default_rng(0)
    photos = real_photos(vision_config.image_size)

    def images(n: int) -> np.ndarray:
        return photos[rng.integers(0, len(photos), n)]

    words = ["a", "photo", "of", "the", "red", "cat", "dog", "on", "street", "rocket", "coffee"]

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choice(words, size=int(rng.integers(4, 14)))) for _ in range(n)]

    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "preset": args.preset, "dtype": "bfloat16",
              "random_weights": True, "bf16_vs_fp32": drift, "rows": []}
    rows = report["rows"]

    def save() -> None:  # after every sweep, so a run cut short still leaves its numbers
        report["wall_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    if args.compile == "static":
        torch._dynamo.config.automatic_dynamic_shapes = False  # one specialized graph per size
    encoders = {"vision": (lambda: VisionEncoderCore(model.vision_model, settings), images, GFLOP_PER_IMAGE),
                "text": (lambda: TextEncoderCore(model.text_model, tokenizer), texts, GFLOP_PER_TEXT)}
    for compiled in ([False] if args.compile == "none" else [False, args.compile]):
        for name in args.encoders:
            make_core, make_batch, gflop = encoders[name]
            core = make_core()
            if compiled:
                core.compile(dynamic=compiled == "dynamic")
                compile_started = time.perf_counter()
                core.encode(make_batch(2))
                print(f"compiled {name} in {time.perf_counter() - compile_started:.1f}s", flush=True)
            for backend in (["default"] if compiled else args.sdpa):
                try:
                    with attention_backend(backend):
                        found = sweep(name, core, make_batch, gflop, device, compiled,
                                      args.min_seconds, args.batch_sizes)
                except RuntimeError as error:  # a kernel that does not support these shapes
                    print(f"{name} attention={backend}: unavailable ({error})", flush=True)
                    continue
                rows += [{**row, "sdpa": backend} for row in found]
                save()

    print(f"\n{report['device']}, torch {report['torch']}, {args.preset} (random weights), bfloat16\n")
    print("| encoder | torch.compile | attention | batch | items/s | ms/batch | MFU |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['encoder']} | {row['compiled']} | {row['sdpa']} | {row['batch_size']} | "
              f"{row['items_per_s']:.1f} | {row['ms_per_batch']:.2f} | {row['mfu']:.1%} |")
    if drift:
        print(f"\nbf16 vs fp32 classify: max |score diff| {drift['max_abs_score_diff']:.2e} "
              f"({drift['images']} photos x {drift['labels']} labels)")
    print(f"wall {report['wall_s']}s")


if __name__ == "__main__":
    main()
