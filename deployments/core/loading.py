"""Loading a SigLIP tower as it comes from its checkpoint: on the device and in the dtype
asked for (or the sensible default), with transformers' noise hidden and a loud warning for a
random-weight test checkpoint."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from deployments.core.checkpoint import RANDOM_WEIGHTS_CONFIG_KEY

logger = logging.getLogger(__name__)

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


def load_tower(tower_class, model: str, device: str, dtype: str):
    """A checkpoint's tower as it comes, on its device and in its dtype, before any rewrite."""
    resolved_device = resolve_device(device)
    with quiet_transformers():
        tower = tower_class.from_pretrained(model, attn_implementation="sdpa",
                                            dtype=resolve_dtype(dtype, resolved_device))
    warn_if_random_weights(tower.config)
    return tower.to(resolved_device).eval()
