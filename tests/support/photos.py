"""Real photographs (scikit-image's bundled samples) in the formats and modes clients send.

Each entry is (name, encoded bytes). The set covers every format the preprocessor promises and
each mode conversion the checkpoint's processor performs."""

from __future__ import annotations

import asyncio
import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image
from skimage import data

from deployments.core.images import preprocess_references


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def distinct(raw: bytes, n: int) -> bytes:
    """The image with `n` appended past its end: the same pixels in every format here, but bytes
    of its own, so that the Ingress's image cache never serves it in place of the stages."""
    return raw + n.to_bytes(8, "big")


def preprocess(references: list[str], params: list[str], settings, **options) -> np.ndarray:
    """The preprocessor's pipeline, called from synchronous test code."""
    return asyncio.run(preprocess_references(references, params, settings, **options))


def _rotated_with_exif(image: Image.Image) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=90)


def _animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


@lru_cache(maxsize=1)
def photos() -> tuple[tuple[str, bytes], ...]:
    astronaut = Image.fromarray(data.astronaut())        # 512x512 RGB
    coffee = Image.fromarray(data.coffee())              # 600x400 RGB
    chelsea = Image.fromarray(data.chelsea())            # 451x300 RGB
    rocket = Image.fromarray(data.rocket())              # 640x427 RGB
    camera = Image.fromarray(data.camera())              # 512x512 grayscale
    hubble = Image.fromarray(data.hubble_deep_field())   # 1000x872 RGB
    retina = Image.fromarray(data.retina())              # 1411x1411 RGB
    coins = Image.fromarray(data.coins())                # 384x303 grayscale
    with_alpha = rocket.convert("RGBA")
    alpha = np.linspace(0, 255, rocket.width, dtype=np.uint8)[None, :].repeat(rocket.height, 0)
    with_alpha.putalpha(Image.fromarray(alpha))
    coins_la = coins.convert("LA")
    coins_la.putalpha(Image.fromarray(np.asarray(coins)[::-1].copy()))
    return (
        ("astronaut.jpg", encode(astronaut, "JPEG", quality=92)),
        ("coffee.png", encode(coffee, "PNG")),
        ("chelsea.webp", encode(chelsea, "WEBP", quality=90)),
        ("rocket-animated.gif", _animated_gif(rocket, coffee.resize(rocket.size))),
        ("camera-gray.bmp", encode(camera, "BMP")),
        ("hubble.tiff", encode(hubble, "TIFF")),
        ("retina-large.jpg", encode(retina, "JPEG", quality=85)),
        ("rocket-alpha.png", encode(with_alpha, "PNG")),
        ("coins-la.png", encode(coins_la, "PNG")),
        ("astronaut-cmyk.jpg", encode(astronaut.convert("CMYK"), "JPEG")),
        ("chelsea-palette.png", encode(chelsea.convert("P"), "PNG")),
        ("chelsea-palette-transparent.png", encode(chelsea.convert("P"), "PNG", transparency=0)),
        ("camera-16bit.png", encode(Image.fromarray(np.asarray(camera).astype(np.uint16) * 200), "PNG")),
        ("chelsea-exif-rotated.jpg", _rotated_with_exif(chelsea)),
    )


@lru_cache(maxsize=1)
def camera_sized_jpeg() -> bytes:
    """A 4.3-megapixel JPEG: large enough for the preprocessor to split its resize into bands
    (deployments/core/resize.py), which none of `photos()` is."""
    astronaut = Image.fromarray(data.astronaut()).resize((2400, 1800), Image.Resampling.BICUBIC)
    return encode(astronaut, "JPEG", quality=90)
