"""What one image may be. The preprocessor checks the bytes before a decode and the header's
size before any pixel is decoded; the fetcher stops reading a URL's body at the same byte cap."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImageLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_image_bytes: int = Field(20 * 2**20, ge=1024, description="Bytes per image, decoded "
                                 "from base64 or fetched by URL.")
    # 48-megapixel phone photos pass; a decompression bomb is refused from its header.
    max_image_pixels: int = Field(50_000_000, ge=1, description="Width x height, read from "
                                  "the image's header before it is decoded. Animated images "
                                  "count their first frame, the only one used.")
