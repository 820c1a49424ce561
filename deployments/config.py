"""Typed settings: the app builder's args (serve_config.yaml `args:`) and each encoder's
`user_config`. Unknown keys are errors here, because Ray's own schema drops them silently."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.core.checkpoint import DEFAULT_MODEL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiglipAppArgs(_Strict):
    """Arguments of `deployments.app:build_app`."""

    model: str = Field(DEFAULT_MODEL, description="Hub id or local folder of a SigLIP checkpoint; "
                       "the SIGLIP_MODEL environment variable overrides it.")
    served_model_name: str | None = Field(None, description="The id clients send as `model`; "
                                          "defaults to `model`.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on the CPU.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads per encoder replica for torch. Default: what Ray "
        "gives the replica (OMP_NUM_THREADS, from its num_cpus: 1 for the default 0.5).")
    request_timeout_s: float = Field(
        60, gt=0, description="A request still unanswered after this long gets a 504. Keep it "
        "below http_options.request_timeout_s, whose 408 is not in OpenAI's error shape.")
    stage_retries: int = Field(
        3, ge=0, le=10, description="Times a request's stage calls are re-sent when a replica "
        "died under them (inference is idempotent) before the client sees a 503.")
    encoder_gpus: Literal["auto"] | Annotated[float, Field(ge=0)] = Field(
        "auto", description="GPUs per encoder replica. auto: 1 when the cluster has GPUs "
        "at deploy time, else 0. Set it explicitly on an autoscaling cluster that starts "
        "without GPU nodes.")


class BatchingConfig(_Strict):
    """An encoder's dynamic batching, counted in items (images or texts), not requests."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)


class TextEncoderConfig(BatchingConfig):
    cache_size: int = Field(20_000, ge=0, description="Text embeddings kept in the LRU cache; "
                            "0 turns it off.")
