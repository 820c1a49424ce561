"""How many replicas each stage runs and what each asks Ray for, decided when the app is built
from the cluster it is built on, so that the one serve_config.yaml uses a CPU-only machine and
a GPU cluster well. Whatever serve_config.yaml sets for a stage still wins: Ray gives the
config file's deployment options precedence over these.

On GPUs the stages autoscale: an encoder replica per GPU, added when a full GPU batch waits,
and image decoding scaled out on CPU cores beside them. On CPUs alone every core is already
busy: a replica the autoscaler adds only costs seconds of CPU to start and then competes for
the same cores, so the counts are fixed, sized to the cores and the memory
(docs/architecture.md, "Sizing")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deployments.config import TextEncoderConfig, VisionEncoderConfig

STAGES = ("Ingress", "ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion", "Collections")

# On a CPU: one single-thread encoder replica per core wasted the least CPU per item (a
# vision and a text replica share each core, taking turns). Past this many, bigger replicas:
# each holds a copy of its tower.
MAX_CPU_ENCODER_REPLICAS = 4
# A replica's process besides its weights: Python, torch, Ray's worker.
REPLICA_OVERHEAD_BYTES = 2**29
# CPU-only clusters: the share of the cluster's CPUs the app asks Ray for. Ray's CPUs are
# counted, not measured: the encoders use every core anyway, and the rest leaves room for other
# apps and for Ray's own processes.
CPU_SHARE = 0.75


@dataclass(frozen=True)
class Cluster:
    """What the app builder sees of the Ray cluster it deploys on."""

    cpus: float
    gpus: float
    memory_bytes: float

    @classmethod
    def current(cls) -> Cluster:
        import ray

        resources = ray.cluster_resources()
        return cls(resources.get("CPU", 0.0), resources.get("GPU", 0.0), resources.get("memory", 0.0))


@dataclass(frozen=True)
class GraphSizing:
    """Serve deployment options per stage, and torch threads per encoder replica (None: what
    Ray gives the replica)."""

    stages: dict[str, dict[str, Any]]
    torch_threads: int | None


def size_graph(cluster: Cluster, encoder_gpus: float, checkpoint_bytes: int | None) -> GraphSizing:
    if encoder_gpus > 0:
        return _on_gpus(encoder_gpus)
    return _on_cpus(cluster, checkpoint_bytes)


def _autoscaling(min_replicas: int, max_replicas: int, target: int, upscale_delay_s: float,
                 downscale_delay_s: float) -> dict[str, Any]:
    return {"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                   "target_ongoing_requests": target, "upscale_delay_s": upscale_delay_s,
                                   "downscale_delay_s": downscale_delay_s}}


def _actor(num_cpus: float, num_gpus: float = 0.0) -> dict[str, Any]:
    # Rounded down, so that the requests never add up to more than was shared out.
    return {"ray_actor_options": {"num_cpus": math.floor(num_cpus * 1000) / 1000, "num_gpus": num_gpus}}


def _on_gpus(encoder_gpus: float) -> GraphSizing:
    vision_batch = VisionEncoderConfig.AUTO_MAX_BATCH_SIZE["cuda"]
    text_batch = TextEncoderConfig.AUTO_MAX_BATCH_SIZE["cuda"]
    return GraphSizing(torch_threads=None, stages={
        # Async fan-out: many requests in flight per replica.
        "Ingress": {"max_ongoing_requests": 256, **_autoscaling(1, 8, 64, 10, 300), **_actor(0.1)},
        # Camera photos cost more CPU than GPU: up to 48 decoding cores per vision replica
        # (docs/performance.md), each reserving the core it uses.
        "ImagePreprocessor": {**_autoscaling(1, 384, 4, 5, 120), **_actor(1)},
        # A new encoder replica when one full GPU batch waits.
        "VisionEncoder": {**_autoscaling(1, 8, vision_batch, 30, 600), **_actor(0.5, encoder_gpus)},
        "TextEncoder": {**_autoscaling(1, 8, text_batch, 30, 600), **_actor(0.5, encoder_gpus)},
        # Microseconds of numpy per call.
        "ScoreFusion": {**_autoscaling(1, 4, 128, 10, 300), **_actor(0.1)},
        # An exact search reads a whole collection: up to a core each.
        "Collections": {**_autoscaling(1, 8, 16, 10, 300), **_actor(1)},
    })


def _on_cpus(cluster: Cluster, checkpoint_bytes: int | None) -> GraphSizing:
    cores = max(1, math.floor(cluster.cpus))
    encoders = min(cores, MAX_CPU_ENCODER_REPLICAS)
    if checkpoint_bytes:
        # A vision and a text replica together hold the checkpoint's weights once.
        per_pair = checkpoint_bytes + 2 * REPLICA_OVERHEAD_BYTES
        encoders = max(1, min(encoders, math.floor(cluster.memory_bytes / per_pair)))
    preprocessors = math.ceil(cores / 4)  # a decode costs about a quarter of an encode
    # Ingress, ScoreFusion and Collections ask for little (a few ms per request); the encoders
    # and the preprocessors share the rest of the app's share, four to one.
    light = 0.05 * min(cores, 2)
    rest = CPU_SHARE * cluster.cpus - 3 * light
    encoder_cpus = 0.8 * rest / (2 * encoders)
    return GraphSizing(torch_threads=max(1, cores // encoders), stages={
        # Enough requests at once to fill every vision replica's batch. Past that they wait, in
        # order of arrival, in Ray's proxy instead of all decoding at once: under overload the
        # cores go to the oldest requests.
        "Ingress": {"num_replicas": 1, "max_ongoing_requests":
                    encoders * VisionEncoderConfig.AUTO_MAX_BATCH_SIZE["cpu"], **_actor(light)},
        "ImagePreprocessor": {"num_replicas": preprocessors, **_actor(0.2 * rest / preprocessors)},
        "VisionEncoder": {"num_replicas": encoders, **_actor(encoder_cpus)},
        "TextEncoder": {"num_replicas": encoders, **_actor(encoder_cpus)},
        "ScoreFusion": {"num_replicas": 1, **_actor(light)},
        "Collections": {"num_replicas": 1, **_actor(light)},
    })
