"""Encoder throughput on one GPU, without Ray: the project's own VisionEncoderCore and
TextEncoderCore (the code the deployments run), so400m shapes, bfloat16, batch sizes 1-256.

    python benchmarks/gpu_encoders.py --out results/gpu_encoders.json

Each layout (the checkpoint's own, and "served": the rewrites the deployments apply to each
tower on this device) runs eagerly and with CUDA graphs for small batches, as served, optionally
under torch.compile.
Beside the speed it reports how far each layout moves float32 outputs, how far bfloat16 moves
classify scores from float32, and how far a CUDA graph's output is from the eager one's.

The model has RANDOM weights built on the GPU (the hub cannot be reached): throughput equals
the real model's, since the compute is the same; the scores themselves are meaningless. The
checks run on real photographs (scikit-image's samples).
Runs in about 2 minutes on an H100. This checks the script anywhere (the fused GELU and CUDA
graphs exist on CUDA only):

    python benchmarks/gpu_encoders.py --preset tiny --device cpu --no-cuda-graphs \
        --layouts checkpoint pad_mlp+fused_qkv
"""

from __future__ import annotations

import argparse
import copy
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

from deployments.core import rewrites, scoring  # noqa: E402
from deployments.core.checkpoint import ImageSettings, LogitParams  # noqa: E402
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore  # noqa: E402
from deployments.core.images import prepare  # noqa: E402
from deployments.testing.random_checkpoint import build_config, build_model, build_tokenizer  # noqa: E402

# so400m's cost (open_clip's profile); MFU figures hold for the so400m preset only.
GFLOP_PER_IMAGE = 670.35  # 384x384, 729 patches
GFLOP_PER_TEXT = 53.13    # 64 tokens
PEAK_BF16_TFLOPS = 989.0  # H100 SXM / H200 dense bf16
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
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


def sweep(kind: str, layout: str, core, make_batch, gflop_per_item: float, device, mode: str,
          min_seconds: float, batch_sizes: list[int]) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        batch = make_batch(batch_size)
        seconds = measure(lambda: core.encode(batch), device, min_seconds)
        per_second = batch_size / seconds
        rows.append({"encoder": kind, "layout": layout, "mode": mode, "batch_size": batch_size,
                     "items_per_s": round(per_second, 1), "ms_per_batch": round(seconds * 1e3, 2),
                     "mfu": round(per_second * gflop_per_item / (PEAK_BF16_TFLOPS * 1e3), 4)})
        print(f"{kind:6} {layout} {mode:11} batch={batch_size:4}  {per_second:9.1f} items/s  "
              f"{seconds * 1e3:8.2f} ms  MFU {rows[-1]['mfu']:.3f}", flush=True)
    return rows


def attention_backend(name: str):
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return nullcontext() if name == "default" else sdpa_kernel(backends[name])


LABEL_PROMPTS = [f"This is a photo of {label}." for label in
                 ["cat", "dog", "astronaut", "rocket", "cup of coffee", "galaxy", "eye", "tissue",
                  "man with a camera", "city street"]]


def real_photos(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "retina",
             "immunohistochemistry"]
    settings = ImageSettings(size, size, SETTINGS.resample, SETTINGS.rescale_factor,
                             SETTINGS.image_mean, SETTINGS.image_std)
    return np.stack([prepare(Image.fromarray(getattr(data, name)()), settings) for name in names])


def precision_drift(model_fp32, layout: str, tokenizer, settings: ImageSettings,
                    photos: np.ndarray) -> dict:
    """Largest |score(bf16) - score(fp32)| on classify, real photos x 10 label prompts."""
    params = LogitParams(model_fp32.logit_scale.item(), model_fp32.logit_bias.item())
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        vision = with_layout(model_fp32.vision_model, layout).to(dtype)
        text = with_layout(model_fp32.text_model, layout).to(dtype)
        images = VisionEncoderCore(vision, settings).encode(photos)
        texts = TextEncoderCore(text, tokenizer).encode(LABEL_PROMPTS)
        results[dtype] = (images.vectors, texts.vectors,
                          scoring.pair_scores(images.vectors, texts.vectors, params))
        del vision, text
    (image32, text32, score32), (image16, text16, score16) = results[torch.float32], results[torch.bfloat16]
    cos_diff = np.abs(image16 @ text16.T - image32 @ text32.T).max()
    return {"max_abs_score_diff": float(np.abs(score16 - score32).max()),
            "max_abs_cosine_diff": float(cos_diff),
            "score_bound_note": "|d score| <= 0.25 * exp(logit_scale) * |d cos|; "
                                f"this checkpoint's exp(logit_scale) = {np.exp(params.logit_scale):.1f}",
            "images": int(len(photos)), "labels": len(LABEL_PROMPTS)}


CORES = {"siglip_vision_model": VisionEncoderCore, "siglip_text_model": TextEncoderCore}


def layout_rewrites(tower: torch.nn.Module, layout: str) -> list[str]:
    """'checkpoint' (as loaded), 'served' (what the deployments apply to this tower on its
    device) or rewrites from rewrites.REWRITES joined by '+'."""
    if layout == "checkpoint":
        return []
    if layout == "served":
        return CORES[tower.config.model_type].serving_rewrites(next(tower.parameters()).device)
    return layout.split("+")


def with_layout(tower: torch.nn.Module, layout: str) -> torch.nn.Module:
    tower = copy.deepcopy(tower)
    rewrites.apply(tower, layout_rewrites(tower, layout))
    return tower


def layout_deviation(model_fp32, layout: str, settings: ImageSettings, photos: np.ndarray,
                     tokenizer) -> dict:
    """Largest change a layout makes to the float32 unit vectors: rounding alone, if exact."""
    deviation = {}
    for name, tower, make_core, inputs in (
            ("image", model_fp32.vision_model, lambda t: VisionEncoderCore(t, settings), photos),
            ("text", model_fp32.text_model, lambda t: TextEncoderCore(t, tokenizer), LABEL_PROMPTS)):
        plain = make_core(tower).encode(inputs).vectors
        rewritten = make_core(with_layout(tower, layout)).encode(inputs).vectors
        deviation[f"max_abs_{name}_vector_diff"] = float(np.abs(plain - rewritten).max())
    return deviation


def top_kernels(run, device: torch.device, count: int = 12) -> dict:
    """The kernels (CPU: operators) that take most of one call's time, and all of them's."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    run()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as profiler:
        run()
        synchronize(device)

    def spent(event) -> float:
        return event.device_time_total if on_gpu else event.self_cpu_time_total

    events = sorted((e for e in profiler.key_averages() if spent(e) > 0), key=spent, reverse=True)
    total = sum(spent(e) for e in events)
    return {"total_ms": round(total / 1e3, 2),
            "top": [{"kernel": e.key[:90], "calls": e.count, "ms": round(spent(e) / 1e3, 2),
                     "share": round(spent(e) / total, 3)} for e in events[:count]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="so400m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per point")
    parser.add_argument("--compile", choices=["dynamic", "static", "none"], default="none",
                        help="besides eager: torch.compile with a dynamic batch dimension, or "
                             "specialized to each batch size, or not at all")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="besides eager: as served, with CUDA graphs for small batches")
    parser.add_argument("--encoders", nargs="+", choices=["vision", "text"], default=["vision", "text"])
    parser.add_argument("--layouts", nargs="+", default=["checkpoint", "served"],
                        help="'checkpoint', 'served' (as the deployments rewrite each tower on "
                             "this device), or rewrites joined by '+' from: " + ", ".join(rewrites.REWRITES))
    parser.add_argument("--no-drift", action="store_true", help="skip the bf16-vs-fp32 check")
    parser.add_argument("--sdpa", nargs="+", default=["default"],
                        choices=["default", "flash", "cudnn", "efficient"],
                        help="attention kernels to compare (eager only)")
    parser.add_argument("--profile-batch", type=int, help="also list the top GPU kernels, eager, "
                                                          "at this batch size")
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
    vision_config = model.config.vision_config
    settings = ImageSettings(vision_config.image_size, vision_config.image_size, SETTINGS.resample,
                             SETTINGS.rescale_factor, SETTINGS.image_mean, SETTINGS.image_std)
    photos = real_photos(vision_config.image_size)

    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "preset": args.preset, "dtype": "bfloat16",
              "random_weights": True, "bf16_vs_fp32": {}, "layout_deviation_fp32": {}, "cuda_graph_deviation": {},
              "top_kernels": {}, "rows": []}
    rows = report["rows"]

    def save() -> None:  # after every step, so a run cut short still leaves its numbers
        report["wall_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    for layout in args.layouts:
        if layout != "checkpoint":
            found = layout_deviation(model, layout, settings, photos, tokenizer)
            report["layout_deviation_fp32"][layout] = found
            print(f"{layout} against the checkpoint's layout, float32: {found}", flush=True)
        if not args.no_drift:
            drift = precision_drift(model, layout, tokenizer, settings, photos)
            report["bf16_vs_fp32"][layout] = drift
            print(f"{layout}: bf16 vs fp32: max |score diff| {drift['max_abs_score_diff']:.2e}, "
                  f"max |cos diff| {drift['max_abs_cosine_diff']:.2e}", flush=True)
        save()

    model = model.to(torch.bfloat16)
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return photos[rng.integers(0, len(photos), n)]

    words = ["a", "photo", "of", "the", "red", "cat", "dog", "on", "street", "rocket", "coffee"]

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choice(words, size=int(rng.integers(4, 14)))) for _ in range(n)]

    if args.compile == "static":
        torch._dynamo.config.automatic_dynamic_shapes = False  # one specialized graph per size
    encoders = {"vision": (lambda tower: VisionEncoderCore(tower, settings), model.vision_model, images, GFLOP_PER_IMAGE),
                "text": (lambda tower: TextEncoderCore(tower, tokenizer), model.text_model, texts, GFLOP_PER_TEXT)}
    modes = ["eager"] + (["cuda_graphs"] if args.cuda_graphs else []) \
        + ([] if args.compile == "none" else [args.compile])
    samples = {"vision": photos[:5], "text": LABEL_PROMPTS[:5]}  # sizes that run as graphs
    for mode in modes:
        for layout in args.layouts:
            for name in args.encoders:
                make_core, tower, make_batch, gflop = encoders[name]
                core = make_core(with_layout(tower, layout))
                if mode == "cuda_graphs":
                    eager = core.encode(samples[name]).vectors
                    capture_started = time.perf_counter()
                    if not core.capture_cuda_graphs():
                        print(f"{name} {layout}: no CUDA graphs (the error is logged above)", flush=True)
                        continue
                    graphed = core.encode(samples[name]).vectors
                    deviation = float(np.abs(graphed - eager).max())
                    report["cuda_graph_deviation"][f"{name} {layout}"] = deviation
                    print(f"recorded {name} graphs in {time.perf_counter() - capture_started:.1f}s; "
                          f"max |graph - eager| {deviation:.2e}", flush=True)
                elif mode != "eager":
                    torch._dynamo.reset()  # every layout gets its own graphs and recompile budget
                    core.compile(dynamic=mode == "dynamic")
                    compile_started = time.perf_counter()
                    core.encode(make_batch(2))
                    print(f"compiled {name} in {time.perf_counter() - compile_started:.1f}s", flush=True)
                elif args.profile_batch:
                    batch = make_batch(args.profile_batch)
                    kernels = top_kernels(lambda: core.encode(batch), device)
                    report["top_kernels"][f"{name} {layout} batch={args.profile_batch}"] = kernels
                    print(f"  kernels {kernels['total_ms']:.2f} ms in all", flush=True)
                    for kernel in kernels["top"]:
                        print(f"  {kernel['share']:6.1%} {kernel['ms']:8.2f} ms  x{kernel['calls']:<5} "
                              f"{kernel['kernel']}", flush=True)
                for backend in (args.sdpa if mode == "eager" else ["default"]):
                    try:
                        with attention_backend(backend):
                            found = sweep(name, layout, core, make_batch, gflop, device, mode,
                                          args.min_seconds, args.batch_sizes)
                    except RuntimeError as error:  # a kernel that does not support these shapes
                        print(f"{name} attention={backend}: unavailable ({error})", flush=True)
                        continue
                    rows += [{**row, "sdpa": backend} for row in found]
                    save()

    print(f"\n{report['device']}, torch {report['torch']}, {args.preset} (random weights), bfloat16\n")
    print("| encoder | layout | mode | attention | batch | items/s | ms/batch | MFU |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['encoder']} | {row['layout']} | {row['mode']} | {row['sdpa']} | "
              f"{row['batch_size']} | {row['items_per_s']:.1f} | {row['ms_per_batch']:.2f} | "
              f"{row['mfu']:.1%} |")
    print(f"wall {report['wall_s']}s")


if __name__ == "__main__":
    main()
