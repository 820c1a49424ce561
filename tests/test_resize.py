"""The banded resize is Pillow's own, pixel for pixel, whatever the shape, filter or load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from skimage import data

import deployments.core.resize as resize_module
from deployments.core.resize import MIN_PIXELS_TO_SPLIT, BandedResizer

FILTERS = [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS,
           Image.Resampling.HAMMING, Image.Resampling.BOX, Image.Resampling.NEAREST]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Uniform noise: every rounding of every band edge shows."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def photo(width: int, height: int) -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture
def bands_by_thread(monkeypatch) -> list[str]:
    """The thread that resampled each band (a part of an image's rows: the start-up check
    resamples whole images)."""
    threads, original = [], resize_module._resample_rows

    def recorded(image, top, bottom, *args):
        if bottom - top < image.height:
            threads.append(threading.current_thread().name)
        return original(image, top, bottom, *args)

    monkeypatch.setattr(resize_module, "_resample_rows", recorded)
    return threads


@pytest.mark.parametrize("helpers", [1, 2, 3])
@pytest.mark.parametrize("width,height,size", [
    (2000, 1001, (384, 384)),     # an odd height: bands of unequal rows
    (1733, 1155, (224, 224)),
    (4001, 500, (384, 384)),      # wide: few rows per band
    (1500, 2400, (384, 384)),     # portrait, still rows first
    (1500, 1500, (384, 1600)),    # upscaled in height, downscaled in width
])
def test_equals_pillow_on_noise(helpers, width, height, size, bands_by_thread):
    image = noise(width, height)
    ours = BandedResizer(helpers).resize(image, size, Image.Resampling.BICUBIC)
    assert ours.tobytes() == image.resize(size, Image.Resampling.BICUBIC).tobytes()
    assert len(bands_by_thread) == helpers + 1
    assert sum(name.startswith("resize") for name in bands_by_thread) == helpers


@pytest.mark.parametrize("resample", FILTERS, ids=[f.name for f in FILTERS])
def test_equals_pillow_with_every_filter(resample):
    image = photo(2400, 1600)
    ours = BandedResizer(2).resize(image, (384, 384), resample)
    assert ours.tobytes() == image.resize((384, 384), resample).tobytes()


def test_small_images_and_other_modes_are_resized_whole(bands_by_thread):
    resizer = BandedResizer(2)
    small = noise(1000, 1000)
    assert small.width * small.height < MIN_PIXELS_TO_SPLIT
    gray = noise(2000, 1500).convert("L")
    for image in (small, gray):
        assert resizer.resize(image, (64, 64), Image.Resampling.BICUBIC).tobytes() == \
            image.resize((64, 64), Image.Resampling.BICUBIC).tobytes()
    assert bands_by_thread == []


def test_busy_helpers_are_not_waited_for(bands_by_thread):
    """A band is never queued behind another image's: with every helper taken, the caller
    resizes the whole image itself."""
    resizer = BandedResizer(1)
    image = noise(2000, 1200)
    assert resizer._claim_idle_helpers(limit=5) == 1
    ours = resizer.resize(image, (384, 384), Image.Resampling.BICUBIC)
    assert ours.tobytes() == image.resize((384, 384), Image.Resampling.BICUBIC).tobytes()
    assert bands_by_thread == []


def test_concurrent_callers_get_their_own_pixels_and_free_every_helper():
    resizer = BandedResizer(2)
    images = [noise(1800, 1200, seed) for seed in range(8)]
    expected = [image.resize((384, 384), Image.Resampling.BICUBIC).tobytes() for image in images]
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(
            lambda image: resizer.resize(image, (384, 384), Image.Resampling.BICUBIC).tobytes(), images))
    assert results == expected
    assert resizer._claim_idle_helpers(limit=5) == 2


def test_tall_images_that_pillow_resizes_columns_first_are_resized_whole(bands_by_thread):
    """Pillow 13 runs its vertical pass first when the height shrinks by more than twice as
    many pixels as the width: there, bands of rows would not be Pillow's first pass."""
    for width, height, size in [(600, 3400, (384, 384)), (1500, 1500, (2000, 384))]:
        image = noise(width, height)
        ours = BandedResizer(2).resize(image, size, Image.Resampling.BICUBIC)
        assert ours.tobytes() == image.resize(size, Image.Resampling.BICUBIC).tobytes()
    assert bands_by_thread == []


def test_a_pillow_with_another_pass_order_gets_no_helpers(monkeypatch, bands_by_thread):
    monkeypatch.setattr(resize_module, "resamples_rows_first", lambda source, size: True)
    assert not resize_module.rows_first_matches_pillow()
    image = noise(2000, 1200)
    ours = BandedResizer(2).resize(image, (384, 384), Image.Resampling.BICUBIC)
    assert ours.tobytes() == image.resize((384, 384), Image.Resampling.BICUBIC).tobytes()
    assert bands_by_thread == []


def test_no_helpers_while_images_wait_for_a_decode_thread(bands_by_thread):
    """One decode thread, two images in flight: one of them waits, so the other is not split."""
    resizer = BandedResizer(1)
    image = noise(2000, 1200)
    with resizer.images_in_flight(1), resizer.images_in_flight(1):
        ours = resizer.resize(image, (384, 384), Image.Resampling.BICUBIC)
    assert ours.tobytes() == image.resize((384, 384), Image.Resampling.BICUBIC).tobytes()
    assert bands_by_thread == []
    with resizer.images_in_flight(1):
        resizer.resize(image, (384, 384), Image.Resampling.BICUBIC)
    assert len(bands_by_thread) == 2
