"""What the serving stages read from a SigLIP checkpoint (hub id or local folder).

Without transformers or torch: the Ingress, the image preprocessor and ScoreFusion import
this, and torch would cost each of their replicas about 180 MB and 2 s more to start."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

DEFAULT_MODEL = "google/siglip-so400m-patch14-384"
MODEL_ENV_VAR = "SIGLIP_MODEL"
# Set in config.json by siglip-make-checkpoint (deployments/testing/random_checkpoint.py), so
# that every loader of a random-weight checkpoint can see what it is.
RANDOM_WEIGHTS_CONFIG_KEY = "random_weights_warning"
MODEL_REMEDY = (f"Set {MODEL_ENV_VAR} to a local checkpoint folder, or make a random-weight test "
                "checkpoint with `siglip-make-checkpoint --preset tiny --out DIR`.")


def resolve_model(configured: str) -> str:
    """`SIGLIP_MODEL` wins over the configured model, so one config serves any checkpoint."""
    return os.environ.get(MODEL_ENV_VAR) or configured


def checkpoint_file(model: str, filename: str, missing_ok: bool = False) -> str | None:
    """The path of one of the checkpoint's files, fetched from the hub if `model` is not a
    local folder (honoring HF_TOKEN, HF_HOME and HF_HUB_OFFLINE). A file it cannot find raises
    FileNotFoundError with the remedy, or gives None if `missing_ok`: absent from the
    checkpoint, or, for a hub id, neither reachable nor in the cache, which the hub client
    cannot tell apart."""
    if os.path.isdir(model):
        path = os.path.join(model, filename)
        if os.path.isfile(path):
            return path
        if missing_ok:
            return None
        raise FileNotFoundError(f"The checkpoint {model} has no {filename}.")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:  # a path, not a hub id
        raise FileNotFoundError(f"No checkpoint folder at {model}. {MODEL_REMEDY}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    try:
        return hf_hub_download(model, filename)
    except EntryNotFoundError as error:
        if missing_ok:
            return None
        raise FileNotFoundError(_not_on_the_hub(model, filename)) from error
    except (RepositoryNotFoundError, HFValidationError) as error:
        raise FileNotFoundError(_not_on_the_hub(model, filename)) from error


def weights_bytes(model: str) -> int | None:
    """The size of the checkpoint's weight files, without downloading any: None for a hub id
    whose weights are not in the local cache."""
    if os.path.isdir(model):
        return sum(entry.stat().st_size for entry in os.scandir(model)
                   if entry.name.endswith((".safetensors", ".bin"))) or None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        path = try_to_load_from_cache(model, "model.safetensors")
    except HFValidationError:  # neither a folder nor a hub id: the stages say so when loading
        return None
    return os.path.getsize(path) if isinstance(path, str) else None


def _not_on_the_hub(model: str, filename: str) -> str:
    return (f"{filename} of {model}: no local folder by that name, and the hub has no such "
            f"file or cannot be reached, nor is it cached. {MODEL_REMEDY}")


def image_processor_config(model: str) -> dict:
    """The image processor's settings in either layout: transformers 4 saved them as
    preprocessor_config.json; transformers 5 saves one processor_config.json with them nested
    under "image_processor", and no preprocessor_config.json."""
    path = checkpoint_file(model, "preprocessor_config.json", missing_ok=True)
    if path is not None:
        with open(path) as f:
            return json.load(f)
    path = checkpoint_file(model, "processor_config.json", missing_ok=True)
    if path is not None:
        with open(path) as f:
            nested = json.load(f).get("image_processor")
        if isinstance(nested, dict):
            return nested
    if not os.path.isdir(model):
        raise FileNotFoundError(_not_on_the_hub(model, "preprocessor_config.json"))
    raise FileNotFoundError(f"The checkpoint {model} has no image processor settings: neither "
                            "preprocessor_config.json nor an image_processor entry in "
                            "processor_config.json.")


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
        """From the checkpoint's image processor settings, with SiglipImageProcessor's defaults
        for the keys it leaves out (tests/test_checkpoint.py checks both layouts against
        transformers' processor)."""
        config = image_processor_config(model)
        size = config.get("size", {"height": 224, "width": 224})
        return cls(height=int(size["height"]), width=int(size["width"]),
                   resample=int(config.get("resample", 3)),  # PIL's BICUBIC
                   rescale_factor=float(config.get("rescale_factor", 1 / 255)),
                   image_mean=tuple(float(v) for v in config.get("image_mean", (0.5, 0.5, 0.5))),
                   image_std=tuple(float(v) for v in config.get("image_std", (0.5, 0.5, 0.5))))


@dataclass(frozen=True)
class ModelFacts:
    """The checkpoint's shapes that a client needs to use its embedding space."""

    embedding_dimensions: int
    image_size: int
    patch_size: int
    max_text_tokens: int  # every text is padded or cut to this many

    @classmethod
    def from_pretrained(cls, model: str) -> "ModelFacts":
        with open(checkpoint_file(model, "config.json")) as f:
            config = json.load(f)
        vision, text = config.get("vision_config", {}), config.get("text_config", {})
        # SiglipVisionConfig's and SiglipTextConfig's defaults for the keys a config leaves out.
        return cls(embedding_dimensions=int(vision.get("hidden_size", 768)),
                   image_size=int(vision.get("image_size", 224)), patch_size=int(vision.get("patch_size", 16)),
                   max_text_tokens=int(text.get("max_position_embeddings", 64)))


_SHA256_BLOB = re.compile(r"^[0-9a-f]{64}$")


def weights_fingerprint(model: str) -> str:
    """SHA-256 over the checkpoint's weight files (each file's own SHA-256, by name): the same
    fingerprint, the same weights. A file from the hub cache is named by the SHA-256 the hub
    recorded for it, so only local checkpoints are read through."""
    if os.path.isdir(model):
        names = sorted(name for name in os.listdir(model) if name.endswith((".safetensors", ".bin")))
    elif checkpoint_file(model, "model.safetensors", missing_ok=True) is not None:
        names = ["model.safetensors"]
    else:
        with open(checkpoint_file(model, "model.safetensors.index.json")) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    combined = hashlib.sha256()
    for name in names:
        path = checkpoint_file(model, name)
        blob = os.path.basename(os.path.realpath(path))
        combined.update(f"{name}:{blob if _SHA256_BLOB.match(blob) else _file_sha256(path)}\n".encode())
    return "sha256:" + combined.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LogitParams:
    """SigLIP's learned temperature and bias: score = sigmoid(cos * exp(scale) + bias)."""

    logit_scale: float
    logit_bias: float

    @classmethod
    def from_pretrained(cls, model: str) -> "LogitParams":
        """Reads the two scalars without loading either tower."""
        weights_file = checkpoint_file(model, "model.safetensors", missing_ok=True)
        if weights_file is None:
            index_file = checkpoint_file(model, "model.safetensors.index.json", missing_ok=True)
            if index_file is None:
                return cls._from_full_model(model)
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
            weights_file = checkpoint_file(model, weight_map["logit_scale"])
            assert weight_map["logit_bias"] == weight_map["logit_scale"], "scalars split across shards"
        scale, bias = _read_scalars(weights_file, ("logit_scale", "logit_bias"))
        return cls(logit_scale=scale, logit_bias=bias)

    @classmethod
    def _from_full_model(cls, model: str) -> "LogitParams":
        from transformers import SiglipModel

        full = SiglipModel.from_pretrained(model)
        return cls(logit_scale=full.logit_scale.item(), logit_bias=full.logit_bias.item())


def _read_scalars(weights_file: str, names: tuple[str, ...]) -> list[float]:
    """numpy reads float32 and float16 tensors; it has no bfloat16, so a checkpoint that keeps
    these in bfloat16 costs the caller a torch import."""
    from safetensors import safe_open

    try:
        with safe_open(weights_file, framework="numpy") as tensors:
            return [tensors.get_tensor(name).item() for name in names]
    except TypeError:  # "data type 'bfloat16' not understood"
        with safe_open(weights_file, framework="pt") as tensors:
            return [tensors.get_tensor(name).item() for name in names]
