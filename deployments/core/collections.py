"""Collections: the user's items (images or texts), embedded once and searched many times, in
LanceDB. One Lance table per collection, on a local folder or an object store (s3://, gs://,
az://); Lance commits each write atomically and retries conflicting commits itself, so several
processes can write one collection at once (docs/architecture.md, "Collections").

Scores are computed here exactly as /v1/rerank computes them (`scoring.pair_scores` over the
stored float32 vectors): LanceDB only chooses the candidates."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

from deployments.core import scoring
from deployments.core.checkpoint import LogitParams
from deployments.core.collection_rules import (FINGERPRINT_KEY, MODEL_KEY, CollectionError, CollectionInfo,
                                              Match, Model, check_name, filter_clause)

# Rows searched per ANN candidate: the candidates are re-ranked exactly.
REFINE_FACTOR = 10
NPROBES = 32


def _schema(model: Model) -> pa.Schema:
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), model.dimensions), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("metadata", pa.json_()),
        pa.field("model_fingerprint", pa.string(), nullable=False),
    ], metadata={MODEL_KEY: model.name.encode(), FINGERPRINT_KEY: model.fingerprint.encode()})


class CollectionStore:
    """The collections under `uri`. Every read sees the latest commit of any process
    (read_consistency_interval 0), so replicas never serve stale items."""

    def __init__(self, uri: str, params: LogitParams, index_threshold: int):
        self._uri = uri
        self._params = params
        self._index_threshold = index_threshold
        self._db: lancedb.AsyncConnection | None = None
        self._indexing: dict[str, asyncio.Task] = {}

    async def _connection(self) -> lancedb.AsyncConnection:
        if self._db is None:
            self._db = await lancedb.connect_async(self._uri, read_consistency_interval=timedelta(0))
        return self._db

    async def _names(self) -> list[str]:
        db = await self._connection()
        names, token = [], None
        while True:
            page = await db.list_tables(page_token=token)
            names += page.tables
            token = page.page_token
            if not token:
                return sorted(names)

    async def _table(self, name: str, model: Model | None = None):
        check_name(name)
        try:
            table = await (await self._connection()).open_table(name)
        except ValueError:
            raise CollectionError(404, f"The collection '{name}' does not exist.", "collection_not_found",
                                  "name") from None
        if model is not None:
            metadata = (await table.schema()).metadata or {}
            stored = metadata.get(FINGERPRINT_KEY, b"").decode()
            if stored != model.fingerprint:
                raise CollectionError(409, f"The collection '{name}' holds vectors of another model "
                                           f"({metadata.get(MODEL_KEY, b'?').decode()}); this server "
                                           f"serves {model.name}. Use a new collection.",
                                      "model_mismatch", "name")
        return table

    async def _info(self, name: str, table) -> CollectionInfo:
        schema = await table.schema()
        metadata = schema.metadata or {}
        return CollectionInfo(name=name, count=await table.count_rows(),
                              dimensions=schema.field("vector").type.list_size,
                              model=metadata.get(MODEL_KEY, b"").decode(),
                              indexed=bool(await table.list_indices()))

    async def create(self, name: str, model: Model) -> CollectionInfo:
        check_name(name)
        db = await self._connection()
        try:
            table = await db.create_table(name, schema=_schema(model))
        except ValueError as error:
            if "already exists" not in str(error):
                raise
            raise CollectionError(409, f"The collection '{name}' already exists.",
                                  "collection_exists", "name") from None
        # Upserts by id from several writers at once leave one row per id only with this set.
        await table.set_unenforced_primary_key("id")
        return await self._info(name, table)

    async def describe(self, name: str) -> CollectionInfo:
        return await self._info(name, await self._table(name))

    async def check(self, name: str, model: Model) -> None:
        """Refuses an unknown collection, and one of another model: without counting rows or
        listing indexes, as `describe` does."""
        await self._table(name, model)

    async def list(self) -> list[CollectionInfo]:
        found = []
        for name in await self._names():
            try:
                found.append(await self.describe(name))
            except CollectionError:  # dropped meanwhile
                pass
        return found

    async def drop(self, name: str) -> None:
        await self._table(name)
        await (await self._connection()).drop_table(name)

    async def upsert(self, name: str, model: Model, ids: list[str], vectors: np.ndarray,
                     modalities: list[str], metadata: list[dict | None], index_when_large: bool = True) -> None:
        """One commit: every item of the request is stored, or none is. A bulk job passes
        `index_when_large=False` and builds the index once, when all its rows are in."""
        table = await self._table(name, model)
        rows = pa.table({
            "id": pa.array(ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), model.dimensions),
            "modality": pa.array(modalities, pa.string()),
            "metadata": pa.array([None if m is None else json.dumps(m) for m in metadata], pa.json_()),
            "model_fingerprint": pa.array([model.fingerprint] * len(ids), pa.string()),
        }, schema=_schema(model).remove_metadata())
        await table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(rows)
        if index_when_large and await table.count_rows() >= self._index_threshold:
            self._index_later(name, table)

    async def ids(self, name: str, model: Model) -> list[str]:
        """Every item's id (a bulk job's rerun skips them)."""
        table = await self._table(name, model)
        return (await table.query().select(["id"]).to_arrow()).column("id").to_pylist()

    async def delete(self, name: str, item_id: str) -> bool:
        """Whether the item was there."""
        table = await self._table(name)
        result = await table.delete(f"id = '{item_id.replace(chr(39), chr(39) * 2)}'")
        return result.num_deleted_rows > 0

    async def build_index(self, name: str) -> None:
        """An approximate (IVF-PQ) index: search then reads only candidate partitions, and
        re-ranks REFINE_FACTOR times the asked-for rows exactly."""
        table = await self._table(name)
        dimensions = (await table.schema()).field("vector").type.list_size
        sub_vectors = next(n for n in (dimensions // 16, dimensions // 8, dimensions // 4, 1)
                           if n and dimensions % n == 0)
        await table.create_index("vector", config=IvfPq(distance_type="cosine", num_sub_vectors=sub_vectors),
                                 replace=True)

    def _index_later(self, name: str, table) -> None:
        running = self._indexing.get(name)
        if running is None or running.done():
            self._indexing[name] = asyncio.ensure_future(self._index_once(name, table))

    async def _index_once(self, name: str, table) -> None:
        if not await table.list_indices():
            await self.build_index(name)

    async def search(self, name: str, model: Model, query: np.ndarray, top_k: int,
                     conditions: dict[str, Any], include_metadata: bool) -> list[Match]:
        table = await self._table(name, model)
        where = filter_clause(conditions)
        search = table.vector_search(np.asarray(query, np.float32).ravel()).distance_type("cosine").limit(top_k)
        if await table.list_indices():
            search = search.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
        if where:
            search = search.where(where)
        rows = await search.select(["id", "vector", "metadata", "_distance"]).to_arrow()
        if rows.num_rows == 0:
            return []
        vectors = np.asarray(rows.column("vector").combine_chunks().flatten(), np.float32).reshape(rows.num_rows, -1)
        ranked = scoring.rank(scoring.pair_scores(np.asarray(query, np.float32).reshape(1, -1), vectors,
                                                  self._params)[0])
        ids = rows.column("id").to_pylist()
        stored = rows.column("metadata").to_pylist() if include_metadata else [None] * rows.num_rows
        return [Match(ids[r.index], r.score, None if stored[r.index] is None else json.loads(stored[r.index]))
                for r in ranked]
