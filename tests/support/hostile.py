"""Hostile images, built by hand because no encoder would write them."""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _signature_and_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit gray pixels and carries almost none of them."""
    return _signature_and_header(width, height) + _chunk(b"IDAT", zlib.compress(bytes(16)))


@lru_cache
def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid PNG of width x height black pixels: about 1 KB per megapixel on the
    wire, width x height bytes (times 3 in RGB) once decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter type 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return _signature_and_header(width, height) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
