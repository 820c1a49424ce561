"""The bulk embedding job's work on one batch of rows, without Ray (deployments/bulk.py runs it
on Ray Data): reading and preparing images, checking texts, and encoding what passed, with a
message for each row that failed instead of an exception that would fail the batch.

Images go through the preprocessor's own functions and the encoders' own cores, so a vector
from a bulk job equals the one the API returns for the same image or text."""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from deployments.core.checkpoint import ImageSettings
from deployments.core.collection_rules import MAX_METADATA_BYTES
from deployments.core.fetch import ImageFetcher, ImageUrlPolicy
from deployments.core.images import UnusableImage, fetch_image, image_bytes, prepare_bytes
from deployments.core.limits import ImageLimits

# What a folder source picks up (lower-cased suffixes): the formats the preprocessor decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def is_uri(location: str) -> bool:
    """s3://, gs://, file://...: a location for Arrow's filesystems, not a local path."""
    return "://" in location[:16]


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """Arrow's filesystem for a local path or an object-store URI, and the path within it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(base: str, relative: str) -> str:
    return posixpath.join(base, relative) if is_uri(base) else os.path.join(base, relative)


class ImageReader:
    """The bytes of images named by local path, object-store URI, http(s) URL or data URI.
    Relative paths are relative to `base` (the folder of the file that lists them). URLs are
    fetched under the serving graph's rules (`url_policy`: SSRF guard, timeouts, size cap)."""

    def __init__(self, limits: ImageLimits, url_policy: ImageUrlPolicy, base: str):
        self._limits, self._url_policy, self._base = limits, url_policy, base
        self._filesystems: dict[str, pafs.FileSystem] = {}

    def read_all(self, references: Sequence[str | None]) -> list[bytes | UnusableImage]:
        """Each reference's bytes, or why there are none; URLs fetched concurrently."""
        return asyncio.run(self._read_all(references))

    async def _read_all(self, references: Sequence[str | None]) -> list[bytes | UnusableImage]:
        fetcher = None
        if any(reference and reference.startswith(("http://", "https://")) for reference in references):
            fetcher = ImageFetcher(self._url_policy, self._limits)
        try:
            return list(await asyncio.gather(*(self._read(reference, fetcher) for reference in references)))
        finally:
            if fetcher is not None:
                await fetcher.close()

    async def _read(self, reference: str | None, fetcher: ImageFetcher | None) -> bytes | UnusableImage:
        if not reference or not isinstance(reference, str):
            return UnusableImage("no image: the image field is empty")
        try:
            if reference.startswith("data:"):
                return image_bytes(reference, self._limits.max_image_bytes)
            if reference.startswith(("http://", "https://")):
                return await fetch_image(reference, fetcher)
            return self._read_file(reference if is_uri(reference) or os.path.isabs(reference)
                                   else join(self._base, reference))
        except UnusableImage as error:
            return error

    def _read_file(self, location: str) -> bytes:
        try:
            fs, path = self._filesystem(location)
            with fs.open_input_file(path) as stream:
                size = stream.size()
                if size > self._limits.max_image_bytes:
                    raise UnusableImage(f"{location} is {size} bytes; the limit is "
                                        f"{self._limits.max_image_bytes} (max_image_bytes)")
                if size == 0:
                    raise UnusableImage(f"{location} is empty")
                return stream.read()
        except (OSError, pa.ArrowException) as error:  # missing, unreadable, a folder, no access
            raise UnusableImage(f"cannot read the image file: {error}") from None

    def _filesystem(self, location: str) -> tuple[pafs.FileSystem, str]:
        if not is_uri(location):
            return filesystem(location)
        # One client per bucket: making an S3 filesystem costs a credentials lookup.
        scheme, _, path = location.partition("://")  # Arrow's path: bucket/key, or /path for file://
        key = f"{scheme}://{path.split('/', 1)[0]}"
        if key not in self._filesystems:
            self._filesystems[key] = pafs.FileSystem.from_uri(location)[0]
        return self._filesystems[key], path


def prepare_images(reader: ImageReader, references: Sequence[str | None], settings: ImageSettings,
                   limits: ImageLimits) -> tuple[np.ndarray, list[str | None]]:
    """(n, height, width, 3) uint8 pixels, zeros where a row failed, and each row's error."""
    pixels = np.zeros((len(references), settings.height, settings.width, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(references)
    for index, source in enumerate(reader.read_all(references)):
        try:
            if isinstance(source, UnusableImage):
                errors[index] = str(source)
            else:
                pixels[index] = prepare_bytes(source, settings, limits)
        except UnusableImage as error:
            errors[index] = str(error)
    return pixels, errors


def check_texts(texts: Sequence[Any], max_chars: int) -> list[str | None]:
    """Each text's error, under the API's rules (InputLimits.max_text_chars)."""
    errors: list[str | None] = []
    for text in texts:
        if not isinstance(text, str) or not text:
            errors.append("no text: the text field is empty")
        elif len(text) > max_chars:
            errors.append(f"the text is {len(text)} characters; the limit is {max_chars} (max_text_chars)")
        else:
            errors.append(None)
    return errors


def encode_valid(encode, items: Sequence, errors: list[str | None], dimensions: int,
                 batch_size: int) -> np.ndarray:
    """(n, dimensions) float32: `encode`'s unit vectors for the rows without an error, in
    forward passes of at most `batch_size`; zeros elsewhere."""
    vectors = np.zeros((len(items), dimensions), dtype=np.float32)
    valid = [index for index, error in enumerate(errors) if error is None]
    for start in range(0, len(valid), batch_size):
        rows = valid[start:start + batch_size]
        if isinstance(items, np.ndarray):
            chunk = items[rows]
        else:
            chunk = [items[row] for row in rows]
        vectors[rows] = encode(chunk).vectors
    return vectors


def embedding_column(vectors: np.ndarray, errors: list[str | None]) -> pa.FixedSizeListArray:
    """fixed_size_list<float32>[dimensions], null where a row failed: the layout LanceDB and
    most vector tools read without conversion."""
    failed = pa.array([error is not None for error in errors], pa.bool_())
    values = pa.array(np.ascontiguousarray(vectors, np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=failed)


def metadata_json(row: dict[str, Any]) -> tuple[dict | None, str | None]:
    """A row's metadata columns as a collection item's metadata, or why it cannot be one."""
    if not row:
        return None, None
    text = json.dumps(row, default=str)
    size = len(text.encode())
    if size > MAX_METADATA_BYTES:
        return None, f"the metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
    return json.loads(text), None
