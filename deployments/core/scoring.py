"""SigLIP's pairwise score and the rankings built on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployments.core.checkpoint import LogitParams
from deployments.core.embeddings import Embeddings


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


def pair_scores(left: np.ndarray, right: np.ndarray, params: LogitParams) -> np.ndarray:
    """(len(left), len(right)) independent probabilities
    sigmoid(cos * exp(logit_scale) + logit_bias). Never a softmax: SigLIP was trained with a
    per-pair sigmoid loss, so one image's scores need not sum to 1."""
    logits = (left @ right.T) * np.exp(params.logit_scale) + params.logit_bias
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def rank(scores: np.ndarray, limit: int | None = None) -> list[Ranked]:
    """Highest score first; equal scores keep their input order."""
    order = np.argsort(-scores, kind="stable")[:limit]
    return [Ranked(int(i), float(scores[i])) for i in order]


def classify(images: Embeddings, labels: Embeddings, params: LogitParams,
             top_k: int | None = None) -> list[list[Ranked]]:
    """For each image, its labels ranked by score."""
    return [rank(row, top_k) for row in pair_scores(images.vectors, labels.vectors, params)]


def rerank(query: Embeddings, documents: Embeddings, params: LogitParams,
           top_n: int | None = None) -> list[Ranked]:
    """The documents ranked by their score against the single query."""
    return rank(pair_scores(query.vectors, documents.vectors, params)[0], top_n)
