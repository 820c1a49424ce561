"""The graph with a VisionEncoder whose model a test can break, and whose forward passes take
long enough that a test can act while batches are certainly in flight. Serve imports this
module in the replicas, by the import path `tests.fault_injection:build_faulty_app`."""

# No `from __future__ import annotations`: Ray reads the builder's annotation at run time.
import time

import torch
from ray.serve import Application

from deployments.app import build_graph
from deployments.config import SiglipAppArgs
from deployments.vision_encoder import VisionEncoder

FORWARD_PASS_S = 2.0


class _FaultyVisionEncoder(VisionEncoder.func_or_class):
    def __init__(self, *args):
        super().__init__(*args)
        encode = self._core.encode

        def slow_encode(pixels):
            time.sleep(FORWARD_PASS_S)
            return encode(pixels)

        self._core.encode = slow_encode

    def break_model(self) -> None:
        """Fills the weights with NaN, as corrupted device memory would leave them."""
        with torch.no_grad():
            for parameter in self._core.tower.parameters():
                parameter.fill_(float("nan"))


def build_faulty_app(args: SiglipAppArgs) -> Application:
    return build_graph(args, VisionEncoder.options(func_or_class=_FaultyVisionEncoder))
