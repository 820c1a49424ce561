"""Pillow's resize, bit for bit, with its first pass spread over idle threads.

Pillow resizes in two passes (libImaging/Resample.c). Unless the height shrinks by more than
twice as many pixels as the width, each source row is first resampled to the output width on
its own, then each output column to the output height. For a camera photo that first pass is
most of the work: 50-75 ms on one core for 5-12 megapixels, as long as the JPEG decode.
Resampling bands of rows on several threads yields the same rows, and the second pass then
runs once over them, as in Pillow's own call: the pixels are identical, and with n helpers a
lone photo's first pass takes about 1/(n+1) of its time, plus the copies of the bands."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Below this, thread hand-offs and the copy of each band cost about what they save.
MIN_PIXELS_TO_SPLIT = 2_000_000


class BandedResizer:
    """Resizes RGB images with `helper_threads` extra threads, as many as the caller has
    decode threads. Helpers work only while no image waits for a decode thread (see
    `images_in_flight`), and a helper takes a band only while idle, never queued behind
    another image's. Under load, then, every image is resized whole on its decode thread:
    bands cost about a tenth more CPU than a whole resize, for the copies of the bands."""

    def __init__(self, helper_threads: int):
        if helper_threads and not rows_first_matches_pillow():
            logger.warning("this Pillow (%s) does not resize rows first as expected: "
                           "resizing on one thread", Image.__version__)
            helper_threads = 0
        self._helpers = ThreadPoolExecutor(helper_threads, thread_name_prefix="resize") \
            if helper_threads else None
        self._idle_helpers = threading.Semaphore(helper_threads)
        self._max_images_helped = helper_threads
        self._images_in_flight = 0

    @contextmanager
    def images_in_flight(self, count: int) -> Iterator[None]:
        """Counts a call's images while it is served (on the caller's event loop)."""
        self._images_in_flight += count
        try:
            yield
        finally:
            self._images_in_flight -= count

    def resize(self, image: Image.Image, size: tuple[int, int],
               resample: Image.Resampling) -> Image.Image:
        width = size[0]
        if (self._helpers is None or self._images_in_flight > self._max_images_helped
                or image.mode != "RGB" or image.width == width
                or image.width * image.height < MIN_PIXELS_TO_SPLIT
                or not resamples_rows_first(image.size, size)):
            return image.resize(size, resample)
        helpers = self._claim_idle_helpers(limit=image.height - 1)
        if not helpers:
            return image.resize(size, resample)
        edges = [image.height * band // (helpers + 1) for band in range(helpers + 2)]
        bands = list(zip(edges, edges[1:]))
        handed_off = [self._helpers.submit(self._resample_rows_and_go_idle, image, top, bottom, width, resample)
                      for top, bottom in bands[1:]]
        rows = [_resample_rows(image, *bands[0], width, resample)] + [f.result() for f in handed_off]
        widths_done = Image.new("RGB", (width, image.height))
        for (top, _), band in zip(bands, rows):
            widths_done.paste(band, (0, top))
        # Its width already matches, so Pillow runs only the second pass here.
        return widths_done.resize(size, resample)

    def _claim_idle_helpers(self, limit: int) -> int:
        claimed = 0
        while claimed < limit and self._idle_helpers.acquire(blocking=False):
            claimed += 1
        return claimed

    def _resample_rows_and_go_idle(self, *band) -> Image.Image:
        try:
            return _resample_rows(*band)
        finally:
            self._idle_helpers.release()


def resamples_rows_first(source: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether Pillow's first pass is the horizontal one (Pillow 13's rule; earlier versions
    always went rows first)."""
    height_shrink = source[1] - size[1]
    return not (height_shrink > 0 and height_shrink > 2 * (source[0] - size[0]))


def rows_first_matches_pillow() -> bool:
    """The installed Pillow resizes rows first where `resamples_rows_first` says it does: a
    check at start-up, so that a Pillow with another rule costs speed, never exactness."""
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for source in (Image.fromarray(noise), Image.fromarray(noise.transpose(1, 0, 2).copy())):
        for size in ((64, 64), (37, 150), (150, 37)):
            if not resamples_rows_first(source.size, size):
                continue
            for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
                in_two_calls = _resample_rows(source, 0, source.height, size[0], resample).resize(size, resample)
                if in_two_calls.tobytes() != source.resize(size, resample).tobytes():
                    return False
    return True


def _resample_rows(image: Image.Image, top: int, bottom: int, width: int,
                   resample: Image.Resampling) -> Image.Image:
    """Pillow's first pass over rows [top, bottom): their height is kept, so it runs alone."""
    band = image.crop((0, top, image.width, bottom))
    return band.resize((width, bottom - top), resample)
