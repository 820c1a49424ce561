"""ScoreFusion stage: embeddings from both encoders in, sigmoid scores and rankings out."""

from __future__ import annotations

from ray import serve

from deployments.core import scoring
from deployments.core.checkpoint import LogitParams, ModelFacts, weights_fingerprint
from deployments.core.embeddings import Embeddings
from deployments.metrics import StageMetrics


@serve.deployment
class ScoreFusion:
    def __init__(self, model: str):
        self._params = LogitParams.from_pretrained(model)
        self._metrics = StageMetrics()
        # Once, at start-up: reads a local checkpoint's weights through (seconds for so400m).
        self._model_card = {**vars(ModelFacts.from_pretrained(model)), **vars(self._params),
                            "fingerprint": weights_fingerprint(model)}

    def model_card(self) -> dict:
        """The checkpoint's facts for GET /v1/models: shapes, the scoring scalars as served,
        and the weights' fingerprint."""
        return self._model_card

    def classify(self, labels: Embeddings, top_k: int | None,
                 images: Embeddings) -> tuple[list[list[scoring.Ranked]], int]:
        """Each image's labels, ranked; and the tokens both towers spent."""
        with self._metrics.timed():
            tokens = int(images.tokens.sum() + labels.tokens.sum())
            return scoring.classify(images, labels, self._params, top_k), tokens

    def rerank(self, query: Embeddings, document_is_image: list[bool],
               text_documents: Embeddings | None, top_n: int | None,
               image_documents: Embeddings | None) -> tuple[list[scoring.Ranked], int]:
        with self._metrics.timed():
            documents = Embeddings.interleave(document_is_image, image_documents, text_documents)
            tokens = int(query.tokens.sum() + documents.tokens.sum())
            return scoring.rerank(query, documents, self._params, top_n), tokens
