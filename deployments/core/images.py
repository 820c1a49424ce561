"""Turns client-supplied image references into the uint8 pixels the vision tower expects,
exactly as the checkpoint's own image processor would prepare them."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.core.checkpoint import ImageSettings


class ImageInputError(ValueError):
    """One image of a request could not be used; `param` names it in the request (`input[3]`)."""

    def __init__(self, param: str, reason: str):
        super().__init__(param, reason)
        self.param = param
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.param}: {self.reason}"


def image_bytes(reference: str) -> bytes:
    """The bytes of a `data:` URI or of a raw base64 string. Raises ValueError."""
    reference = reference.strip()
    if reference.startswith("data:"):
        header, comma, reference = reference.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError("a data URI must be of the form data:image/<type>;base64,<data>")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", reference), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64 (expected a data URI or base64-encoded image bytes)") from None
    if not data:
        raise ValueError("empty image")
    return data


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb`: transparency is composited onto white; every other mode
    (P, L, CMYK, 16-bit) goes through Pillow's own conversion to RGB."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode(data: bytes) -> Image.Image:
    """Decodes any format Pillow reads (the first frame of an animation) and applies the EXIF
    orientation, as transformers' `load_image` does."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return ImageOps.exif_transpose(image)


def prepare(image: Image.Image, settings: ImageSettings) -> np.ndarray:
    """(height, width, 3) uint8: RGB, resized with the checkpoint's filter. Rescaling and
    normalization are left to the vision encoder, on its device."""
    resized = to_rgb(image).resize((settings.width, settings.height),
                                   resample=Image.Resampling(settings.resample))
    return np.asarray(resized, dtype=np.uint8)


def preprocess_references(references: list[str], params: list[str],
                          settings: ImageSettings) -> np.ndarray:
    """(n, height, width, 3) uint8 for a request's images. A bad image raises ImageInputError
    with its `params` entry, so one request's bad input never reaches a shared batch."""
    pixels = np.empty((len(references), settings.height, settings.width, 3), dtype=np.uint8)
    for index, (reference, param) in enumerate(zip(references, params, strict=True)):
        try:
            pixels[index] = prepare(decode(image_bytes(reference)), settings)
        except UnidentifiedImageError:
            raise ImageInputError(param, "not an image in a supported format "
                                         "(JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
        except Exception as error:  # Pillow raises many types for corrupt input.
            raise ImageInputError(param, f"cannot decode image: {error}") from None
    return pixels
