"""Scores are SiglipModel's own sigmoid probabilities, with its scale and bias."""

from __future__ import annotations

import numpy as np

from deployments.core import scoring
from deployments.core.checkpoint import LogitParams
from deployments.core.embeddings import Embeddings
from tests.support.photos import photos

LABELS = ["This is a photo of a cat.", "This is a photo of a rocket.", "This is a photo of coffee."]


def test_logit_params_are_read_from_the_checkpoint(tiny_checkpoint, reference):
    params = LogitParams.from_pretrained(tiny_checkpoint)
    assert params.logit_scale == reference.model.logit_scale.item()
    assert params.logit_bias == reference.model.logit_bias.item()
    assert params.logit_bias != 0  # a missing bias would still pass a scale-only check


def test_pair_scores_equal_siglip_forward(tiny_checkpoint, reference):
    raws = [raw for _, raw in photos()[:4]]
    scores = scoring.pair_scores(reference.image_embeddings(raws), reference.text_embeddings(LABELS),
                                 LogitParams.from_pretrained(tiny_checkpoint))
    expected = reference.scores(raws, LABELS)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert not np.allclose(scores.sum(axis=1), 1)  # independent sigmoids, not a softmax


def test_rankings_are_sorted_and_cut():
    params = LogitParams(logit_scale=np.log(10.0), logit_bias=-1.0)
    images = Embeddings(np.eye(3, dtype=np.float32)[:2], np.array([4, 4]))
    labels = Embeddings(np.array([[0.6, 0.8, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32),
                        np.array([2, 2, 2]))
    ranked = scoring.classify(images, labels, params, top_k=2)
    assert [[r.index for r in row] for row in ranked] == [[1, 0], [0, 1]]
    assert all(row[0].score >= row[1].score for row in ranked)
    query = Embeddings(images.vectors[:1], images.tokens[:1])
    assert [r.index for r in scoring.rerank(query, labels, params)] == [1, 0, 2]
    assert [r.index for r in scoring.rerank(query, labels, params, top_n=1)] == [1]
