"""Collections stage: the store of the user's embedded items (deployments/core/collections.py),
one deployment that every Ingress replica calls. It owns the LanceDB connections, so the
Ingress never imports LanceDB or pyarrow, and it scales on its own: an exact search reads a
whole collection (docs/architecture.md, "Collections")."""

from __future__ import annotations

from ray import serve

from deployments.core.checkpoint import LogitParams
from deployments.core.collection_rules import resolve_uri
from deployments.core.collections import CollectionStore


@serve.deployment
class Collections(CollectionStore):
    def __init__(self, model: str, uri: str, index_threshold: int):
        # Scores as ScoreFusion computes them, from the same two scalars.
        super().__init__(resolve_uri(uri), LogitParams.from_pretrained(model), index_threshold)
