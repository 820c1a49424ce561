"""The graph with encoders whose forward passes take a set time, and a VisionEncoder whose model
a test can break. Serve imports this module in the replicas, by the import paths
`tests.support.fault_injection:build_faulty_app` and `tests.support.fault_injection:build_slow_app`.

A forward pass that sleeps stands in for one that waits on a GPU: the replica is busy while the
CPU stays free, so tests can hold batches in flight, or keep an encoder loaded, without the
load starving everything else on a 2-core machine. The embeddings are still computed for real."""

# No `from __future__ import annotations`: Ray reads the builders' annotations at run time.
import time

import torch
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.app import build_graph
from deployments.config import SiglipAppArgs
from deployments.text_encoder import TextEncoder
from deployments.vision_encoder import VisionEncoder


def _slowed(encoder: Deployment, forward_pass_s: float) -> Deployment:
    class SlowEncoder(encoder.func_or_class):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            encode = self._core.encode

            def slow_encode(batch):
                time.sleep(forward_pass_s)
                return encode(batch)

            self._core.encode = slow_encode

        def break_model(self) -> None:
            """Fills the weights with NaN, as corrupted device memory would leave them."""
            with torch.no_grad():
                for parameter in self._core.tower.parameters():
                    parameter.fill_(float("nan"))

    return encoder.options(func_or_class=SlowEncoder)


def build_faulty_app(args: SiglipAppArgs) -> Application:
    """VisionEncoder forward passes take 2 s: long enough to act while one is in flight."""
    return build_graph(args, _slowed(VisionEncoder, 2.0), TextEncoder)


def build_slow_app(args: SiglipAppArgs) -> Application:
    """Both encoders take 0.5 s per forward pass: a few clients keep them loaded."""
    return build_graph(args, _slowed(VisionEncoder, 0.5), _slowed(TextEncoder, 0.5))
