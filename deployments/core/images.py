"""Turns client-supplied image references into the uint8 pixels the vision tower expects,
exactly as the checkpoint's own image processor would prepare them."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from concurrent.futures import Executor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.core.checkpoint import ImageSettings
from deployments.core.fetch import FetchError, ImageFetcher, is_url
from deployments.core.limits import ImageLimits
from deployments.core.resize import BandedResizer

WITHOUT_HELPERS = BandedResizer(helper_threads=0)


class ImageInputError(ValueError):
    """One image of a request could not be used; `param` names it in the request (`input[3]`)."""

    def __init__(self, param: str, reason: str):
        super().__init__(param, reason)
        self.param = param
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.param}: {self.reason}"


class UnusableImage(ValueError):
    """An image refused by our own checks; the message says why, for the client."""


def image_bytes(reference: str, max_bytes: int = ImageLimits().max_image_bytes) -> bytes:
    """The bytes of a `data:` URI or of a raw base64 string. Raises UnusableImage."""
    reference = reference.strip()
    if reference.startswith("data:"):
        header, comma, reference = reference.partition(",")
        if not comma or not header.endswith(";base64"):
            raise UnusableImage("a data URI must be of the form data:image/<type>;base64,<data>")
    if len(reference) > (max_bytes + 2) // 3 * 4 * 1.05:  # 5% for line breaks; decoded below
        raise UnusableImage(f"the image is larger than {max_bytes} bytes (max_image_bytes)")
    try:
        data = _b64decode_allowing_line_breaks(reference)
    except (binascii.Error, ValueError):
        raise UnusableImage("not valid base64 (expected a data URI, base64-encoded image bytes "
                            "or an http(s) URL)") from None
    if not data:
        raise UnusableImage("empty image")
    if len(data) > max_bytes:
        raise UnusableImage(f"the image is {len(data)} bytes; the limit is {max_bytes} (max_image_bytes)")
    return data


def _b64decode_allowing_line_breaks(text: str) -> bytes:
    try:  # most clients send one unbroken line: no copy of a multi-megabyte string
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return base64.b64decode("".join(text.split()), validate=True)


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb`: transparency is composited onto white; every other mode
    (P, L, CMYK, 16-bit) goes through Pillow's own conversion to RGB."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        # convert() copies even an RGB image: 36 MB for a 12-megapixel photo.
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode(data: bytes, max_pixels: int, jpeg_draft_size: int | None = None) -> Image.Image:
    """Decodes any format Pillow reads (the first frame of an animation) and applies the EXIF
    orientation, as transformers' `load_image` does. The size is checked from the header,
    before any pixel is decoded, so a decompression bomb is refused without allocating it.

    `jpeg_draft_size` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, as long as both sides
    stay at least that many pixels: several times faster on camera photos, but the pixels are no
    longer the reference processor's (an opt-in; see `jpeg_draft` in the app args)."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise UnusableImage(f"the image is {width}x{height} = {width * height} pixels; the limit "
                            f"is {max_pixels} (max_image_pixels)")
    if width * height == 0:
        raise UnusableImage(f"the image is {width}x{height}: it has no pixels")
    if jpeg_draft_size and image.format == "JPEG":
        image.draft(image.mode, (jpeg_draft_size, jpeg_draft_size))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # in place: a copy is most of a decode's cost
    return image


def prepare(image: Image.Image, settings: ImageSettings,
            resizer: BandedResizer = WITHOUT_HELPERS) -> np.ndarray:
    """(height, width, 3) uint8: RGB, resized with the checkpoint's filter (by Pillow, on
    `resizer`'s idle threads too). Rescaling and normalization are left to the vision encoder,
    on its device."""
    resized = resizer.resize(to_rgb(image), (settings.width, settings.height),
                             Image.Resampling(settings.resample))
    return np.asarray(resized, dtype=np.uint8)


async def preprocess_references(references: list[str], params: list[str], settings: ImageSettings,
                                limits: ImageLimits = ImageLimits(), jpeg_draft: bool = False,
                                fetcher: ImageFetcher | None = None,
                                decoder: Executor | None = None,
                                resizer: BandedResizer = WITHOUT_HELPERS) -> np.ndarray:
    """(n, height, width, 3) uint8 for a request's images: data URIs, raw base64 or, with a
    `fetcher`, http(s) URLs (fetched concurrently). A bad image raises ImageInputError with its
    `params` entry, so one request's bad input never reaches a shared batch. The decoding runs
    on `decoder`'s threads (default: asyncio's), where Pillow releases the GIL, and resizes
    also on `resizer`'s. `jpeg_draft` (opt-in) decodes large JPEGs at reduced scale, at least
    twice the model's input size: faster, but off the reference processor's pixels."""
    sources = await asyncio.gather(*(_fetch_if_url(reference, param, fetcher)
                                     for reference, param in zip(references, params, strict=True)))
    return await asyncio.get_running_loop().run_in_executor(
        decoder, _decode_all, sources, params, settings, limits, jpeg_draft, resizer)


async def _fetch_if_url(reference: str, param: str, fetcher: ImageFetcher | None) -> str | bytes:
    if not is_url(reference):
        return reference
    try:
        return await fetch_image(reference, fetcher)
    except UnusableImage as error:
        raise ImageInputError(param, str(error)) from None


async def fetch_image(url: str, fetcher: ImageFetcher | None) -> bytes:
    """The image at `url`. Raises UnusableImage naming the URL (cut to 100 characters)."""
    try:
        if fetcher is None:
            raise FetchError("image URLs are not fetched here")
        return await fetcher.fetch(url.strip())
    except FetchError as error:
        shown = url if len(url) <= 100 else url[:97] + "..."
        raise UnusableImage(f"cannot fetch {shown}: {error}") from None


def prepare_bytes(data: bytes, settings: ImageSettings, limits: ImageLimits,
                  jpeg_draft_size: int | None = None, resizer: BandedResizer = WITHOUT_HELPERS) -> np.ndarray:
    """One encoded image's pixels at the checkpoint's size. Raises UnusableImage, whose
    message is meant for the user, whatever Pillow raised."""
    try:
        return prepare(decode(data, limits.max_image_pixels, jpeg_draft_size), settings, resizer)
    except UnusableImage:
        raise
    except UnidentifiedImageError:
        raise UnusableImage("not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except Image.DecompressionBombError:  # Pillow's own guard, met before ours by some formats
        raise UnusableImage(f"the image has more than {limits.max_image_pixels} pixels "
                            "(max_image_pixels)") from None
    except Exception as error:  # Pillow raises many types for corrupt input.
        raise UnusableImage(f"cannot decode image: {error}") from None


def _decode_all(sources: list[str | bytes], params: list[str], settings: ImageSettings,
                limits: ImageLimits, jpeg_draft: bool, resizer: BandedResizer) -> np.ndarray:
    draft_size = 2 * max(settings.height, settings.width) if jpeg_draft else None
    pixels = np.empty((len(sources), settings.height, settings.width, 3), dtype=np.uint8)
    for index, (source, param) in enumerate(zip(sources, params, strict=True)):
        try:
            data = source if isinstance(source, bytes) else image_bytes(source, limits.max_image_bytes)
            pixels[index] = prepare_bytes(data, settings, limits, draft_size, resizer)
        except UnusableImage as error:
            raise ImageInputError(param, str(error)) from None
    return pixels
