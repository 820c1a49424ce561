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

    def copy(self) -> "Embeddings":
        """Its own arrays: a row of a batch otherwise keeps the whole batch's alive."""
        return Embeddings(self.vectors.copy(), self.tokens.copy())

    def rows(self) -> list["Embeddings"]:
        return self.split([1] * len(self))

    def split(self, sizes: list[int]) -> list["Embeddings"]:
        bounds = np.cumsum(sizes)[:-1]
        return [Embeddings(v, t) for v, t in zip(np.split(self.vectors, bounds),
                                                  np.split(self.tokens, bounds))]

    def group_means(self, group_size: int) -> "Embeddings":
        """One row per run of `group_size` rows: their mean, normalized again to unit length
        (a prompt ensemble's label vector); tokens add up."""
        vectors = self.vectors.reshape(-1, group_size, self.vectors.shape[1]).mean(axis=1)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings(vectors.astype(np.float32), self.tokens.reshape(-1, group_size).sum(axis=1))
