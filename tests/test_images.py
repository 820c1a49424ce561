"""Image preparation equals the checkpoint's own processor, format by format, mode by mode."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from transformers.image_processing_backends import PilBackend

from deployments.core.checkpoint import ImageSettings
from deployments.core.encoders import VisionEncoderCore
from deployments.core.images import ImageInputError, image_bytes
from deployments.core.limits import ImageLimits
from deployments.core.resize import BandedResizer
from tests.support.hostile import png_bomb, png_header
from tests.support.photos import camera_sized_jpeg, data_uri, encode, photos, preprocess

PHOTOS = photos()


@pytest.fixture(scope="module")
def settings(tiny_checkpoint) -> ImageSettings:
    return ImageSettings.from_pretrained(tiny_checkpoint)


def test_settings_come_from_the_checkpoint(settings, tiny_checkpoint):
    assert (settings.height, settings.width) == (64, 64)
    assert settings.resample == Image.Resampling.BICUBIC
    assert settings.image_mean == settings.image_std == (0.5, 0.5, 0.5)


def test_the_reference_processor_resizes_with_pillow(reference):
    """transformers 5 picks a torchvision processor wherever torchvision is installed; the
    reference must stay the Pillow one, which the pixels below equal."""
    assert isinstance(reference.processor.image_processor, PilBackend)


@pytest.mark.parametrize("name,raw", PHOTOS, ids=[name for name, _ in PHOTOS])
def test_pixels_equal_the_processor(name, raw, settings, tiny_checkpoint, reference):
    pixels = preprocess([data_uri(raw)], ["input[0]"], settings)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 64, 64, 3)
    encoder = VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu")
    ours = encoder.normalize(pixels).numpy()
    np.testing.assert_allclose(ours, reference.pixel_values([raw]), rtol=0, atol=1e-6)


def test_a_camera_sized_photo_resized_on_helper_threads_equals_the_processor(settings, tiny_checkpoint,
                                                                             reference):
    """Large enough for the resize to be split into bands (deployments/core/resize.py)."""
    raw = camera_sized_jpeg()
    pixels = preprocess([data_uri(raw)], ["input[0]"], settings, resizer=BandedResizer(helper_threads=2))
    encoder = VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu")
    np.testing.assert_allclose(encoder.normalize(pixels).numpy(), reference.pixel_values([raw]),
                               rtol=0, atol=1e-6)


def test_alpha_is_composited_onto_white(settings):
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    pixels = preprocess([data_uri(encode(transparent, "PNG"))], ["x"], settings)
    assert (pixels == 255).all()


def test_exif_orientation_is_applied(settings):
    """A tall image stored sideways must come out as the upright one, not the stored one."""
    upright = Image.new("RGB", (40, 80), "white")
    upright.paste((0, 0, 0), (0, 0, 40, 40))  # black top half
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    pixels = preprocess([data_uri(stored)], ["x"], settings)[0].astype(int)
    assert pixels[:32].mean() < 40 and pixels[32:].mean() > 215


def test_gif_uses_its_first_frame(settings):
    red, blue = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    raw = encode(red, "GIF", save_all=True, append_images=[blue])
    pixels = preprocess([data_uri(raw)], ["x"], settings)[0]
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
        preprocess([good, reference], ["documents[0]", "documents[1]"], settings)
    assert raised.value.param == "documents[1]"
    assert reason in raised.value.reason


def test_image_input_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ImageInputError("input[2]", "broken")))
    assert (error.param, error.reason) == ("input[2]", "broken")


@pytest.mark.parametrize("raw, reason", [
    (png_bomb(10_000, 6_000), "10000x6000 = 60000000 pixels; the limit is 50000000 .max_image_pixels"),
    (png_bomb(20_000, 20_000), "more than 50000000 pixels .max_image_pixels"),  # Pillow's guard first
    (png_header(10**6, 10**6), "50000000 pixels .max_image_pixels"),  # declared, never sent
    (png_header(0, 10), "cannot decode|no pixels|supported format"),
], ids=["60-megapixels", "400-megapixels", "declared-only", "zero-width"])
def test_oversized_and_empty_images_are_refused_from_their_header(raw, reason, settings):
    with pytest.raises(ImageInputError, match=reason):
        preprocess([data_uri(raw)], ["input[0]"], settings)


def test_image_bytes_limit_holds_before_and_after_base64_decoding(settings):
    raw = encode(Image.new("RGB", (300, 300)), "BMP")  # 270 KB
    with pytest.raises(ImageInputError, match=r"larger than 100000 bytes \(max_image_bytes\)"):
        preprocess([data_uri(raw)], ["x"], settings, limits=ImageLimits(max_image_bytes=100_000))
    # Line breaks inflate the base64 text without adding bytes; the decoded size decides.
    wrapped = "\n".join(base64.b64encode(raw[:99_000]).decode()[i:i + 76] for i in range(0, 132_000, 76))
    with pytest.raises(ImageInputError, match="cannot decode|supported format"):
        preprocess([wrapped], ["x"], settings, limits=ImageLimits(max_image_bytes=100_000))


def test_urls_are_refused_where_no_fetcher_is_given(settings):
    with pytest.raises(ImageInputError, match="cannot fetch http://example.com/cat.jpg"):
        preprocess(["http://example.com/cat.jpg"], ["input[0]"], settings)


VALID = [encode(Image.new(mode, (20, 12), "red" if mode == "RGB" else 128), fmt)
         for mode, fmt in (("RGB", "PNG"), ("RGB", "JPEG"), ("L", "GIF"), ("RGB", "WEBP"),
                           ("RGB", "BMP"), ("RGB", "TIFF"))]


@hypothesis_settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda raw, cut: raw[:cut], st.sampled_from(VALID), st.integers(0, 400)),
    st.builds(lambda raw, at, junk: raw[:at] + junk + raw[at + len(junk):],
              st.sampled_from(VALID), st.integers(0, 300), st.binary(min_size=1, max_size=64)),
    st.builds(png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
))
def test_any_bytes_give_pixels_or_an_image_input_error(raw, settings):
    try:
        pixels = preprocess([data_uri(raw)], ["input[0]"], settings)
    except ImageInputError as error:
        assert error.param == "input[0]" and error.reason
    else:
        assert pixels.shape == (1, 64, 64, 3) and pixels.dtype == np.uint8


def test_jpeg_draft_is_an_opt_in_that_only_touches_large_jpegs(settings):
    photo = Image.open(io.BytesIO(dict(PHOTOS)["astronaut.jpg"])).convert("RGB")
    large = data_uri(encode(photo.resize((1024, 1024)), "JPEG", quality=90))  # 16x the 64 px input
    small = data_uri(encode(photo.resize((100, 100)), "JPEG", quality=90))  # under 2x: full decode
    png = data_uri(encode(photo.resize((1024, 1024)), "PNG"))
    exact = preprocess([large, small, png], ["a", "b", "c"], settings).astype(int)
    drafted = preprocess([large, small, png], ["a", "b", "c"], settings,
                         jpeg_draft=True).astype(int)
    assert (drafted[1:] == exact[1:]).all()
    difference = np.abs(drafted[0] - exact[0])
    assert difference.max() > 0 and difference.mean() < 2.0


def test_decoding_runs_on_the_threads_it_is_given(settings):
    """The preprocessor caps concurrent decodes at its CPUs by passing its own executor."""
    raws = [raw for _, raw in photos()[:3]]
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as decoder:
        threads: list[str] = []
        original_submit = decoder.submit

        def submit(function, *args):
            return original_submit(lambda: (threads.append(threading.current_thread().name),
                                            function(*args))[1])

        decoder.submit = submit
        pixels = preprocess([data_uri(raw) for raw in raws], ["a", "b", "c"], settings, decoder=decoder)
    assert threads == ["decode_0"]
    np.testing.assert_array_equal(pixels, preprocess([data_uri(raw) for raw in raws], ["a", "b", "c"], settings))
