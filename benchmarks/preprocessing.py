"""What one image costs the ImagePreprocessor, photo by photo: the CPU time to decode and resize
each of the serving benchmark's photographs (JPEG, 1-12 megapixels) on one thread, with the
reference decode and with `jpeg_draft`, and from it how many preprocessing cores keep a vision
encoder busy. A GPU encodes an so400m image in under 2 ms (benchmarks/gpu_encoders.py); a core
needs tens of milliseconds to prepare a camera photo, so on a GPU cluster the preprocessor's
cores, not the GPUs, are what camera photos cost most of.

    python -m benchmarks.preprocessing --sizes 224 384 --encoder-rate 655 --core-price 0.04

The two modes take turns photo by photo, so that a shared machine's drift falls on both alike.
Writes preprocessing.json and preprocessing.md to --out. Only the checkpoint's image processor
settings are used (a random-weight preset; no model runs).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from benchmarks.serving import MEGAPIXELS, REPO, machine, preset_checkpoint, realistic_jpegs, write_report
from deployments.core.checkpoint import ImageSettings
from deployments.core.images import image_bytes, preprocess_references

MODES = {"reference": False, "jpeg_draft": True}  # mode: jpeg_draft


async def cpu_ms_per_photo(photos: list[str], settings: ImageSettings, rounds: int) -> dict[str, list[float]]:
    """Median CPU milliseconds to prepare each photo, per mode. The process does nothing else
    meanwhile, so its CPU time is the decode's, on whichever single thread ran it."""
    samples = {mode: [[] for _ in photos] for mode in MODES}
    for _ in range(rounds):
        for index, photo in enumerate(photos):
            for mode, jpeg_draft in MODES.items():
                started = time.process_time()
                await preprocess_references([photo], ["photo"], settings, jpeg_draft=jpeg_draft)
                samples[mode][index].append((time.process_time() - started) * 1e3)
    return {mode: [statistics.median(times) for times in per_photo] for mode, per_photo in samples.items()}


def cores_needed(mean_ms: float, images_per_s: float) -> float:
    return mean_ms / 1e3 * images_per_s


def usd_per_1k_images(mean_ms: float, core_price: float) -> float:
    return mean_ms / 3.6e6 * core_price * 1e3


def markdown(report: dict) -> str:
    rate, price = report["encoder_rate"], report["core_price"]
    lines = [f"Machine: {report['machine']}; image processor of `{report['preset']}`; CPU ms per "
             f"image on one thread, median of {report['rounds']} rounds.", "",
             f"Command: `{report['command']}`", "",
             "| photo | JPEG KB | " + " | ".join(f"{size}px {mode}" for size in report["sizes"] for mode in MODES) + " |",
             "|---|---:|" + "---:|" * (len(report["sizes"]) * len(MODES))]
    for index, photo in enumerate(report["photos"]):
        cells = [f"{report['results'][str(size)][mode][index]:.1f}" for size in report["sizes"] for mode in MODES]
        lines.append(f"| {photo['megapixels']} MP | {photo['kilobytes']} | " + " | ".join(cells) + " |")
    means = [report["mean_ms"][str(size)][mode] for size in report["sizes"] for mode in MODES]
    lines.append("| mean of the six | | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    lines += ["", "For the mix of the six photos:", ""]
    for size in report["sizes"]:
        for mode in MODES:
            mean = report["mean_ms"][str(size)][mode]
            figures = [f"{1e3 / mean:.1f} images/s per core"]
            if rate:
                figures.append(f"{cores_needed(mean, rate):.1f} cores for {rate:g} images/s (one encoder's rate)")
            if price:
                figures.append(f"${usd_per_1k_images(mean, price):.5f} per 1,000 images at ${price:g} per core-hour")
            lines.append(f"- {size}px, {mode}: " + "; ".join(figures))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "so400m"],
                        help="whose image processor settings (filter, rescaling) to use")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="square model input sizes to resize to (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--encoder-rate", type=float, default=None,
                        help="images/s one vision encoder replica takes, to size the preprocessing for")
    parser.add_argument("--core-price", type=float, default=None,
                        help="USD per CPU core-hour, for the preprocessing's cost per 1,000 images")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    settings = ImageSettings.from_pretrained(preset_checkpoint(args.preset))
    sizes = args.sizes or [settings.height]
    photos = realistic_jpegs()
    results = {str(size): asyncio.run(cpu_ms_per_photo(
        photos, dataclasses.replace(settings, height=size, width=size), args.rounds)) for size in sizes}
    report = {"machine": machine(), "preset": args.preset, "sizes": sizes, "rounds": args.rounds,
              "encoder_rate": args.encoder_rate, "core_price": args.core_price,
              "command": "python -m benchmarks.preprocessing " + " ".join(sys.argv[1:]),
              "photos": [{"megapixels": mp, "kilobytes": round(len(image_bytes(photo)) / 1e3)}
                         for mp, photo in zip(MEGAPIXELS, photos)],
              "results": results,
              "mean_ms": {size: {mode: round(statistics.mean(times), 1) for mode, times in by_mode.items()}
                          for size, by_mode in results.items()}}
    write_report(args.out, "preprocessing", report, markdown(report))


if __name__ == "__main__":
    main()
