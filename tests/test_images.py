"""Image preparation equals the checkpoint's own processor, format by format, mode by mode."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from deployments.core.checkpoint import ImageSettings
from deployments.core.encoders import VisionEncoderCore
from deployments.core.images import ImageInputError, image_bytes, preprocess_references
from tests.photos import data_uri, encode, photos

PHOTOS = photos()


@pytest.fixture(scope="module")
def settings(tiny_checkpoint) -> ImageSettings:
    return ImageSettings.from_pretrained(tiny_checkpoint)


def test_settings_come_from_the_checkpoint(settings, tiny_checkpoint):
    assert (settings.height, settings.width) == (64, 64)
    assert settings.resample == Image.Resampling.BICUBIC
    assert settings.image_mean == settings.image_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name,raw", PHOTOS, ids=[name for name, _ in PHOTOS])
def test_pixels_equal_the_processor(name, raw, settings, tiny_checkpoint, reference):
    pixels = preprocess_references([data_uri(raw)], ["input[0]"], settings)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 64, 64, 3)
    encoder = VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu")
    ours = encoder.normalize(pixels).numpy()
    np.testing.assert_allclose(ours, reference.pixel_values([raw]), rtol=0, atol=1e-6)


def test_alpha_is_composited_onto_white(settings):
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    pixels = preprocess_references([data_uri(encode(transparent, "PNG"))], ["x"], settings)
    assert (pixels == 255).all()


def test_exif_orientation_is_applied(settings):
    """A tall image stored sideways must come out as the upright one, not the stored one."""
    upright = Image.new("RGB", (40, 80), "white")
    upright.paste((0, 0, 0), (0, 0, 40, 40))  # black top half
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    pixels = preprocess_references([data_uri(stored)], ["x"], settings)[0].astype(int)
    assert pixels[:32].mean() < 40 and pixels[32:].mean() > 215


def test_gif_uses_its_first_frame(settings):
    red, blue = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    raw = encode(red, "GIF", save_all=True, append_images=[blue])
    pixels = preprocess_references([data_uri(raw)], ["x"], settings)[0]
    assert pixels[..., 0].min() > 200 and pixels[..., 2].max() < 50


def test_raw_base64_and_data_uris_decode_alike():
    raw = encode(Image.new("RGB", (4, 4)), "PNG")
    assert image_bytes(base64.b64encode(raw).decode()) == raw
    assert image_bytes(data_uri(raw, "image/png")) == raw
    assert image_bytes(" \n" + data_uri(raw) + "\n") == raw


@pytest.mark.parametrize("reference,reason", [
    ("not base64 at all!", "base64"),
    ("data:image/png,abc", "data URI"),
    ("", "empty"),
    (base64.b64encode(b"plain text, not an image").decode(), "supported format"),
    (base64.b64encode(encode(Image.new("RGB", (64, 64)), "PNG")[:60]).decode(), "cannot decode"),
])
def test_a_bad_image_names_its_request_position(reference, reason, settings):
    good = data_uri(encode(Image.new("RGB", (8, 8)), "PNG"))
    with pytest.raises(ImageInputError) as raised:
        preprocess_references([good, reference], ["documents[0]", "documents[1]"], settings)
    assert raised.value.param == "documents[1]"
    assert reason in raised.value.reason


def test_image_input_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ImageInputError("input[2]", "broken")))
    assert (error.param, error.reason) == ("input[2]", "broken")
