"""Bulk embedding throughput: siglip-embed's Ray Data job against a plain single-process loop
(Pillow decode, the checkpoint's own processor, the model at batch 8 on 2 torch threads), on
the same folder of real JPEG photographs of 1-12 megapixels, taking turns round by round.

Also the bound the machine's cores set: cores / (CPU seconds of one image's decode and resize
+ its share of a batch's forward pass, each measured alone on one thread), and how close each
comes to it.

    python -m benchmarks.bulk --preset base --photos 300 --rounds 2

The photographs are scikit-image's sample photos, cropped, mirrored and scaled to 1-12
megapixels (made once under checkpoints/). The checkpoint has random weights (the hub cannot be
reached here): its throughput is the real model's, its vectors mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from skimage import data

from benchmarks.serving import MEGAPIXELS, REPO, machine, preset_checkpoint, write_report

# scikit-image's colour photographs.
SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def photo_folder(count: int) -> Path:
    """`count` distinct JPEGs: photo i is source i % 7 at MEGAPIXELS[i % 6] (7 and 6 share no
    factor, so every source comes at every size), cropped by up to 20% and every other one
    mirrored, so that no two share their bytes."""
    folder = REPO / "checkpoints" / f"bulk-photos-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(data, name)()) for name in SOURCES]
    for index in range(count):
        source = sources[index % len(sources)]
        cut = 0.8 + 0.2 * ((index * 37) % 11) / 10
        box = (0, 0, round(source.width * cut), round(source.height * cut))
        image = source.crop(box)
        if index % 2:
            image = ImageOps.mirror(image)
        scale = (MEGAPIXELS[index % len(MEGAPIXELS)] * 1e6 / (image.width * image.height)) ** 0.5
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:04d}.jpg", "JPEG", quality=90)
    return folder


def plain_loop(paths: list[Path], checkpoint: str, batch_size: int, threads: int) -> float:
    """Seconds for the loop a user would write first, loading the model included (as the bulk
    job's seconds include its encoders' start)."""
    from transformers import AutoProcessor, SiglipVisionModel

    torch.set_num_threads(threads)
    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(checkpoint, backend="pil")
    model = SiglipVisionModel.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [ImageOps.exif_transpose(Image.open(path)) for path in paths[start:start + batch_size]]
            inputs = processor(images=images, return_tensors="pt")
            torch.nn.functional.normalize(model(**inputs).pooler_output, dim=-1).numpy()
    return time.perf_counter() - started


def cpu_seconds_per_image(paths: list[Path], checkpoint: str, batch_size: int) -> dict[str, float]:
    """One thread each: the bulk job's decode and resize per photo (mean over the set), and
    its encoder's forward pass per image at `batch_size`."""
    from deployments.core.checkpoint import ImageSettings
    from deployments.core.encoders import VisionEncoderCore
    from deployments.core.images import prepare_bytes
    from deployments.core.limits import ImageLimits

    torch.set_num_threads(1)
    settings, limits = ImageSettings.from_pretrained(checkpoint), ImageLimits()
    started = time.process_time()
    pixels = np.stack([prepare_bytes(path.read_bytes(), settings, limits) for path in paths])
    decode = (time.process_time() - started) / len(paths)
    core = VisionEncoderCore.from_pretrained(checkpoint, "cpu", "float32")
    core.encode(pixels[:batch_size])  # warm-up
    started = time.process_time()
    rounds = 3
    for _ in range(rounds):
        core.encode(pixels[:batch_size])
    encode = (time.process_time() - started) / (rounds * batch_size)
    return {"decode": decode, "encode": encode}


def _ray_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and of every Ray process, by pid, with its group."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            times = process.cpu_times()
        except psutil.Error:
            continue
        if process.pid == os.getpid():
            group = "driver (Ray Data's executor)"
        elif "_Encoder" in command:
            group = "encoder actors"
        elif "ray" not in command:
            continue
        elif "default_worker.py" in command or command.startswith(("ray::IDLE", "ray::MapBatches", "ray::Write")):
            group = "decode and write tasks"
        else:  # raylet, GCS, agents, and Ray Data's stats, autoscaling and location actors
            group = "Ray's own processes"
        found[process.pid] = (group, times.user + times.system)
    return found


def bulk_job(folder: Path, checkpoint: str) -> dict:
    """siglip-embed on a Ray started beforehand, as the command starts it (and as on a running
    cluster): the job's seconds, Ray's start (which a one-machine run adds once), and where the
    CPU went meanwhile."""
    import ray

    from deployments.bulk import BulkArgs, connect, run

    started = time.perf_counter()
    connect("local")
    ray_start = time.perf_counter() - started
    try:
        before = _ray_cpu_seconds()
        with tempfile.TemporaryDirectory() as out:
            summary = run(BulkArgs(model=checkpoint, input=str(folder), output=out))
        cpu: dict[str, float] = {}
        for pid, (group, seconds) in _ray_cpu_seconds().items():
            cpu[group] = cpu.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    finally:
        ray.shutdown()
    assert summary.errors == 0, summary
    return {"seconds": summary.seconds, "ray_start_seconds": ray_start, "cpu_seconds": cpu}


def markdown(report: dict) -> str:
    """The report's tables."""
    bound = report["bound_images_per_s"]
    rows = [f"| {name} | {r['images_per_s']:.2f} | {r['images_per_s'] / bound:.2f} | {r['seconds']:.1f} |"
            for name, r in report["results"].items()]
    cost = report["cpu_seconds_per_image"]
    return "\n".join([
        f"Machine: {report['machine']}; `{report['preset']}` (random weights), {report['photos']} JPEG "
        f"photographs of 1-12 MP ({report['megapixels_mean']:.1f} MP mean); median of {report['rounds']} "
        "rounds taking turns.", "", f"Command: `{report['command']}`", "",
        "| | images/s | of the bound | seconds |", "|---|---:|---:|---:|", *rows, "",
        f"siglip-embed against the loop: **{report['speedup']:.2f}×**. Ray's own start, once per "
        f"machine run, took {report['ray_start_seconds']:.1f} s more (with it: "
        f"{report['speedup_with_ray_start']:.2f}×).", "",
        f"Bound: {report['cores']} cores / ({cost['decode'] * 1e3:.0f} ms decode and resize + "
        f"{cost['encode'] * 1e3:.0f} ms forward pass of CPU per image, one thread each) = "
        f"{bound:.2f} images/s.", "",
        "Where siglip-embed's CPU went (core-seconds, median round; the machine had "
        f"{report['cores']} × the job's seconds = {report['cores'] * report['results']['siglip-embed (Ray Data)']['seconds']:.0f}):", "",
        "| processes | core-seconds | per image |", "|---|---:|---:|",
        *(f"| {group} | {seconds:.1f} | {seconds / report['photos'] * 1e3:.0f} ms |"
          for group, seconds in report["job_cpu_seconds"].items()), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "so400m"])
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    checkpoint = preset_checkpoint(args.preset)
    folder = photo_folder(args.photos)
    paths = sorted(folder.glob("*.jpg"))
    cost = cpu_seconds_per_image(paths, checkpoint, 8)
    loops, jobs = [], []
    for _ in range(args.rounds):
        loops.append(plain_loop(paths, checkpoint, 8, 2))
        jobs.append(bulk_job(folder, checkpoint))
        print(f"loop {loops[-1]:.1f} s, siglip-embed {jobs[-1]['seconds']:.1f} s", file=sys.stderr)
    loop_s = statistics.median(loops)
    job_s = statistics.median(job["seconds"] for job in jobs)
    ray_start = statistics.median(job["ray_start_seconds"] for job in jobs)
    cores = os.cpu_count()
    megapixels = [Image.open(path).width * Image.open(path).height / 1e6 for path in paths]
    report = {
        "machine": machine(), "preset": args.preset, "photos": len(paths), "rounds": args.rounds,
        "megapixels_mean": statistics.mean(megapixels), "cores": cores,
        "command": "python -m benchmarks.bulk " + " ".join(sys.argv[1:]),
        "cpu_seconds_per_image": cost,
        "bound_images_per_s": cores / (cost["decode"] + cost["encode"]),
        "results": {"plain loop (batch 8, 2 threads)": {"seconds": loop_s, "images_per_s": len(paths) / loop_s},
                    "siglip-embed (Ray Data)": {"seconds": job_s, "images_per_s": len(paths) / job_s}},
        "speedup": loop_s / job_s, "speedup_with_ray_start": loop_s / (job_s + ray_start),
        "ray_start_seconds": ray_start, "rounds_seconds": {"loop": loops, "siglip-embed": jobs},
        "job_cpu_seconds": sorted(jobs, key=lambda job: job["seconds"])[len(jobs) // 2]["cpu_seconds"],
    }
    write_report(args.out, f"bulk_cpu_{args.preset}", report, markdown(report))


if __name__ == "__main__":
    main()
