"""What the serving stages read from a SigLIP checkpoint (hub id or local folder), and where
they run it."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from deployments.core.random_checkpoint import RANDOM_WEIGHTS_CONFIG_KEY

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "google/siglip-so400m-patch14-384"
MODEL_ENV_VAR = "SIGLIP_MODEL"


def resolve_model(configured: str) -> str:
    """`SIGLIP_MODEL` wins over the configured model, so one config serves any checkpoint."""
    return os.environ.get(MODEL_ENV_VAR) or configured


@contextmanager
def quiet_transformers():
    """Loading one tower from a full SiglipModel checkpoint makes transformers print a table of
    every weight of the other tower as 'unexpected'; that is by design here, so hide it."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def warn_if_random_weights(config) -> None:
    warning = getattr(config, RANDOM_WEIGHTS_CONFIG_KEY, None)
    if warning:
        logger.warning("!" * 20 + " %s " + "!" * 20, warning)


@dataclass(frozen=True)
class ImageSettings:
    """The checkpoint's image processor settings that serving must reproduce."""

    height: int
    width: int
    resample: int  # a PIL.Image.Resampling value
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, model: str) -> "ImageSettings":
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model)
        size = processor.size
        return cls(height=int(size["height"]), width=int(size["width"]),
                   resample=int(processor.resample),
                   rescale_factor=float(processor.rescale_factor),
                   image_mean=tuple(float(v) for v in processor.image_mean),
                   image_std=tuple(float(v) for v in processor.image_std))


@dataclass(frozen=True)
class LogitParams:
    """SigLIP's learned temperature and bias: score = sigmoid(cos * exp(scale) + bias)."""

    logit_scale: float
    logit_bias: float

    @classmethod
    def from_pretrained(cls, model: str) -> "LogitParams":
        """Reads the two scalars without loading either tower."""
        from safetensors import safe_open
        from transformers.utils import cached_file

        def fetch(filename):
            return cached_file(model, filename, _raise_exceptions_for_missing_entries=False)

        weights_file = fetch("model.safetensors")
        if weights_file is None:
            index_file = fetch("model.safetensors.index.json")
            if index_file is None:
                return cls._from_full_model(model)
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
            weights_file = fetch(weight_map["logit_scale"])
            assert weight_map["logit_bias"] == weight_map["logit_scale"], "scalars split across shards"
        with safe_open(weights_file, framework="pt") as tensors:
            return cls(logit_scale=float(tensors.get_tensor("logit_scale").float()),
                       logit_bias=float(tensors.get_tensor("logit_bias").float()))

    @classmethod
    def _from_full_model(cls, model: str) -> "LogitParams":
        from transformers import SiglipModel

        full = SiglipModel.from_pretrained(model)
        return cls(logit_scale=full.logit_scale.item(), logit_bias=full.logit_bias.item())


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str) -> torch.device:
    """'auto' takes CUDA when torch can use it. Ray may hand a replica a GPU id that torch
    cannot use (a fake GPU in tests, a driver mismatch): then run on the CPU, and say so."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if requested == "cuda":
        raise RuntimeError(f"device='cuda' was asked for, but torch cannot use CUDA "
                           f"(CUDA_VISIBLE_DEVICES={visible!r}, torch {torch.__version__})")
    if visible:
        logger.warning("Ray assigned GPU ids %s to this replica, but torch %s cannot use CUDA "
                       "there; running on the CPU.", visible, torch.__version__)
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 on the CPU: the reference's precision, which the
    CPU keeps unless asked otherwise (bfloat16 there is fast only with AMX, and 1e-3 off)."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]
