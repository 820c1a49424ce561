"""The serving graph, as `serve_config.yaml` builds it:

    Ingress ─┬─> ImagePreprocessor ─> VisionEncoder ─┐
             ├─> TextEncoder ────────────────────────┼─> ScoreFusion
             ├───────────────────────────────────────┘
             └─> Collections (LanceDB)

Each stage is its own deployment, so each autoscales on its own.
"""

# No `from __future__ import annotations` here: Ray reads build_app's annotation at run time
# to validate the YAML args into SiglipAppArgs.
import logging

import ray
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.collections import Collections
from deployments.config import SiglipAppArgs
from deployments.core.checkpoint import resolve_model, weights_bytes
from deployments.ingress import Ingress
from deployments.preprocessor import ImagePreprocessor
from deployments.routing import SPREADING_OPTIONS
from deployments.score_fusion import ScoreFusion
from deployments.sizing import Cluster, size_graph
from deployments.stage_calls import RequestPolicy
from deployments.text_encoder import TextEncoder
from deployments.vision_encoder import VisionEncoder

logger = logging.getLogger("ray.serve")


def encoder_gpus(args: SiglipAppArgs) -> float:
    """GPUs per encoder replica: 'auto' asks for one only when the cluster has GPUs now."""
    if args.encoder_gpus != "auto":
        return float(args.encoder_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(args: SiglipAppArgs) -> Application:
    return build_graph(args, VisionEncoder, TextEncoder)


def build_graph(args: SiglipAppArgs, vision_encoder: Deployment,
                text_encoder: Deployment) -> Application:
    """The graph with chosen encoder deployments: the fault-injection tests pass ones whose
    model can be broken or slowed down."""
    model = resolve_model(args.model)
    gpus = encoder_gpus(args)
    cluster = Cluster.current()
    sizing = size_graph(cluster, gpus, weights_bytes(model))
    torch_threads = args.torch_threads or sizing.torch_threads
    logger.info("Serving %s on a cluster of %s CPUs and %s GPUs: %s; %s torch thread(s) per "
                "encoder replica (serve_config.yaml's options win over these).", model,
                cluster.cpus, cluster.gpus, sizing.stages, torch_threads or "Ray's")

    # The preprocessor and the encoders get several calls at once from one request:
    # SPREADING_OPTIONS spreads them over their replicas (deployments/routing.py).
    def sized(deployment: Deployment, spreading: bool = False) -> Deployment:
        return deployment.options(**sizing.stages[deployment.name], **(SPREADING_OPTIONS if spreading else {}))

    return sized(Ingress).bind(
        model=model,
        served_model_name=args.served_model_name or model,
        policy=RequestPolicy(timeout_s=args.request_timeout_s, retries=args.stage_retries,
                             images_per_call=args.images_per_call,
                             texts_per_call=args.texts_per_call),
        limits=args.limits,
        text_cache_size=args.ingress_text_cache_size,
        image_cache_size=args.ingress_image_cache_size,
        jpeg_draft=args.jpeg_draft,
        preprocessor=sized(ImagePreprocessor, spreading=True).bind(
            model=model, limits=args.limits, jpeg_draft=args.jpeg_draft,
            url_policy=args.image_urls),
        vision=sized(vision_encoder, spreading=True).bind(
            model=model, device=args.device, dtype=args.dtype, torch_threads=torch_threads),
        text=sized(text_encoder, spreading=True).bind(
            model=model, device=args.device, dtype=args.dtype, torch_threads=torch_threads),
        fusion=sized(ScoreFusion).bind(model=model),
        collections=sized(Collections).bind(model=model, uri=args.collections.uri,
                                            index_threshold=args.collections.index_threshold)
        if args.collections.enabled else None,
    )
