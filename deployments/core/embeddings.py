"""What the encoders return and the other stages pass around: numpy only, so that stages
without torch can hold it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Embeddings:
    """Unit-length vectors, one row per input, and the tokens each input cost the tower
    (text: real tokens before padding; image: patches)."""

    vectors: np.ndarray  # (n, dim) float32
    tokens: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def concatenate(cls, parts: Sequence["Embeddings"]) -> "Embeddings":
        return cls(np.concatenate([p.vectors for p in parts]), np.concatenate([p.tokens for p in parts]))

    @classmethod
    def interleave(cls, is_image: list[bool], images: "Embeddings | None",
                   texts: "Embeddings | None") -> "Embeddings":
        """Rows back in input order, from the images and the texts each encoded separately."""
        kinds = np.asarray(is_image, dtype=bool)
        parts = [p for p in (images, texts) if p is not None]
        vectors = np.empty((len(kinds), parts[0].vectors.shape[1]), dtype=np.float32)
        tokens = np.empty(len(kinds), dtype=np.int64)
        for rows, part in ((kinds, images), (~kinds, texts)):
            if part is not None:
                vectors[rows], tokens[rows] = part.vectors, part.tokens
        return cls(vectors, tokens)

    def rows(self) -> list["Embeddings"]:
        return self.split([1] * len(self))

    def split(self, sizes: list[int]) -> list["Embeddings"]:
        bounds = np.cumsum(sizes)[:-1]
        return [Embeddings(v, t) for v, t in zip(np.split(self.vectors, bounds),
                                                  np.split(self.tokens, bounds))]
