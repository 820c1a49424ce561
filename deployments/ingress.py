"""Ingress stage: the HTTP API. Validates requests, fans work out to the other stages and
assembles responses. Every stage call's result comes back to it and goes on by value, never
as another call's unawaited argument: with those, Ray 2.60 killed an Ingress replica, and
every request in it, when an encoder replica died under load (a failed reference count in
Ray's dependency resolver; ray-project/ray#56123 is the same race, for cancels). Text
embeddings that come back are kept: a known label set never reaches the text encoder again."""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at run time.
import asyncio
import base64
import json
import logging
import time
from typing import Awaitable, Sequence

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import InputLimits
from deployments.core.cache import LRUCache, get_or_compute, inline_image_key
from deployments.core.collection_rules import MAX_METADATA_BYTES, CollectionError, CollectionInfo
from deployments.core.collection_rules import Model as CollectionModel
from deployments.core.collection_rules import filter_clause
from deployments.core.embeddings import Embeddings
from deployments.errors import ApiError
from deployments.fastapi_app import build_fastapi_app
from deployments.gate import ApiKeys, GateSettings, check_request_size
from deployments.metrics import CacheMetrics
from deployments.multipart import form_openapi
from deployments.protocol import (Classification, ClassifyRequest, ClassifyResponse, Collection,
                                  CollectionCreateRequest, CollectionDeleted, CollectionItem,
                                  CollectionItemDeleted, CollectionItemsRequest,
                                  CollectionItemsResponse, CollectionList, CollectionSearchRequest,
                                  CollectionSearchResponse, EmbeddingData, EmbeddingRequest,
                                  EmbeddingResponse, ImageItem, Item, LabelScore, ModelCard,
                                  ModelList, RerankRequest, RerankResponse, RerankResult,
                                  SearchMatch, TextItem, Usage)
from deployments.stage_calls import (RequestPolicy, StageAttempt, StageCalls, call_parts, root_cause,
                                     run_stage_calls)
from deployments.stage_health import StageWatch, serve_stage_states

logger = logging.getLogger("ray.serve")


def _image_reference(item: Item) -> str | None:
    return item.image if isinstance(item, ImageItem) else None


def _text(item: Item) -> str:
    return item.text if isinstance(item, TextItem) else item


def _texts_with_params(items: Sequence[Item], is_image: list[bool], param: str) -> list[tuple[str, str]]:
    return [(f"{param}[{i}]", _text(item)) for i, (item, flag) in enumerate(zip(items, is_image)) if not flag]


def _refused(error: CollectionError) -> ApiError:
    return ApiError(error.status, error.message, param=error.param, code=error.code)


def _collection(info: CollectionInfo) -> Collection:
    return Collection(name=info.name, count=info.count, dimensions=info.dimensions, model=info.model,
                      indexed=info.indexed)


def _to_wire(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # OpenAI's encoding: little-endian float32 bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@serve.deployment
# No app yet: Serve calls __serve_build_asgi_app__ once the constructor has run.
@serve.ingress()
class Ingress:
    def __init__(self, *, model: str, served_model_name: str, policy: RequestPolicy, limits: InputLimits,
                 text_cache_size: int, image_cache_size: int, jpeg_draft: bool,
                 preprocessor: DeploymentHandle, vision: DeploymentHandle, text: DeploymentHandle,
                 fusion: DeploymentHandle, collections: DeploymentHandle | None):
        # `model` and `jpeg_draft` change what an embedding is: a change restarts this replica,
        # and so empties its caches.
        self._model_name = served_model_name
        self._policy = policy
        self._limits = limits
        api_keys = ApiKeys.from_environment()
        if api_keys is None:
            logger.warning("No API keys configured: /v1 answers anyone who can reach it.")
        else:
            logger.info("%d API key(s) configured: /v1 needs 'Authorization: Bearer <key>'.", len(api_keys))
        self._gate = GateSettings(api_keys, limits.max_body_bytes)
        self._created = int(time.time())
        self._model_card: dict | None = None  # from the stages, once they answer
        self._text_cache: LRUCache[str, Embeddings] = LRUCache(text_cache_size,
                                                               CacheMetrics("text").record)
        self._image_cache: LRUCache[str, Embeddings] = LRUCache(image_cache_size)
        self._image_cache_metrics = CacheMetrics("image")
        self._jpeg_draft = jpeg_draft
        self._preprocessor = preprocessor
        self._vision = vision
        self._text = text
        self._fusion = fusion
        self._collections = collections  # None: turned off
        app_name = serve.get_replica_context().app_name
        stages = (preprocessor, vision, text, fusion, *((collections,) if collections else ()))
        self._stages = StageWatch(lambda: asyncio.to_thread(serve_stage_states, app_name),
                                  [stage.deployment_name for stage in stages])

    # ---- stage calls ---------------------------------------------------------------------

    async def _encode_images(self, attempt: StageAttempt, references: list[str],
                             params: list[str]) -> Embeddings:
        """Embeddings of the images. Those sent inline before, byte for byte, come from this
        replica's cache, at neither a decode nor an encode. The others go in parts of at most
        `images_per_call`: a request's parts decode and encode in parallel, on as many replicas
        as there are."""
        keys = [None if key is None else f"jpeg_draft={self._jpeg_draft}:{key}"
                for key in map(inline_image_key, references)]
        rows = {i: row for i, key in enumerate(keys) if key is not None
                and (row := self._image_cache.get(key)) is not None}
        todo = [i for i in range(len(references)) if i not in rows]
        self._image_cache_metrics.record(len(rows), sum(keys[i] is not None for i in todo))
        if todo:
            async def encode(part: list[int]) -> Embeddings:
                pixels = await attempt.send(self._preprocessor.preprocess, [references[i] for i in part],
                                            [params[i] for i in part])
                return await attempt.send(self._vision.encode, pixels)

            parts = [todo[part] for part in call_parts(len(todo), self._policy.images_per_call)]
            encoded = Embeddings.concatenate(await attempt.results([encode(part) for part in parts]))
            for i, row in zip(todo, encoded.rows()):
                rows[i] = row
                if keys[i] is not None:
                    self._image_cache.put(keys[i], row.copy())
        return Embeddings.concatenate([rows[i] for i in range(len(references))])

    async def _encode_texts(self, attempt: StageAttempt, texts: list[str]) -> Embeddings:
        """Embeddings of the texts. Only those this replica has not kept go to the text
        encoder: a classify with a known label set makes one stage call fewer, and on a GPU
        cluster the text encoder's replicas are not woken, or scaled out, for cache lookups.
        The others go in parts of at most `texts_per_call`, encoded in parallel as images are."""
        async def encode(missing: list[str]) -> list[Embeddings]:
            calls = [attempt.send(self._text.encode, missing[part])
                     for part in call_parts(len(missing), self._policy.texts_per_call)]
            return Embeddings.concatenate(await attempt.results(calls)).rows()

        # Safe to keep per string: texts are padded to a fixed length, so an embedding does not
        # depend on the texts that shared its batch.
        return Embeddings.concatenate(await get_or_compute(self._text_cache, texts, encode))

    def _encode_items(self, attempt: StageAttempt, items: Sequence[Item], is_image: list[bool],
                      param: str) -> tuple[Awaitable[Embeddings] | None, list[str]]:
        """(the image embeddings to await, None without images; the texts, in order)."""
        images = [i for i, flag in enumerate(is_image) if flag]
        texts = [_text(item) for item, flag in zip(items, is_image) if not flag]
        if not images:
            return None, texts
        return self._encode_images(attempt, [items[i].image for i in images],
                                   [f"{param}[{i}]" for i in images]), texts

    async def _run(self, stage_calls: StageCalls, stages: Sequence[DeploymentHandle]) -> list:
        """The request's stage calls, after a check that none of the `stages` it needs failed
        to deploy: such a request gets a 503 naming the stage at once, not after its timeout."""
        down = await self._stages.failed_stages(stage.deployment_name for stage in stages)
        if down:
            stage, why = next(iter(down.items()))
            raise ApiError(503, f"The {stage} stage cannot serve: {why}",
                           type="service_unavailable", code="stage_unavailable", retry_after_s=30)
        return await run_stage_calls(stage_calls, self._policy)

    def _stages_for(self, images: bool, texts: bool, *more: DeploymentHandle) -> list[DeploymentHandle]:
        return [*((self._preprocessor, self._vision) if images else ()),
                *((self._text,) if texts else ()), *more]

    async def _embed(self, items: Sequence[Item], param: str) -> Embeddings:
        """The items' embeddings, in order, through the caches and the encoders; `param` names
        the items in errors (`items[3]`)."""
        is_image = [_image_reference(item) is not None for item in items]
        check_request_size(self._limits, images=sum(is_image),
                           texts=_texts_with_params(items, is_image, param))

        def stage_calls(attempt: StageAttempt):
            images, texts = self._encode_items(attempt, items, is_image, param)
            return [images, self._encode_texts(attempt, texts) if texts else None]

        images, texts = await self._run(stage_calls, self._stages_for(any(is_image), not all(is_image)))
        return Embeddings.interleave(is_image, images, texts)

    async def _card(self) -> ModelCard:
        """The served model's card: the checkpoint's facts from ScoreFusion, the encoders' dtype
        and device from the VisionEncoder; asked once per Ingress replica."""
        if self._model_card is None:
            async def ask(attempt: StageAttempt):
                facts, encoder = await attempt.results([attempt.send(self._fusion.model_card),
                                                        attempt.send(self._vision.effective_config)])
                return {**facts, "dtype": encoder["dtype"], "device": encoder["device"]}

            [self._model_card] = await self._run(lambda attempt: [ask(attempt)], [self._vision, self._fusion])
        return ModelCard(id=self._model_name, created=self._created, **self._model_card)

    def _check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self._model_name:
            raise ApiError(404, f"The model '{requested}' does not exist; this server serves "
                                f"'{self._model_name}'.", param="model", code="model_not_found")

    # ---- routes --------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's app: the API's routes, served by this object's methods."""
        app = build_fastapi_app(self._gate)
        app.get("/health")(self.health)
        app.get("/health/live")(self.live)
        app.get("/v1/models")(self.models)
        app.get("/v1/models/{model_id:path}")(self.model)
        app.post("/v1/embeddings", openapi_extra=form_openapi("/v1/embeddings"))(self.embeddings)
        app.post("/v1/classify", openapi_extra=form_openapi("/v1/classify"))(self.classify)
        app.post("/v1/rerank", response_model_exclude_none=True,
                 openapi_extra=form_openapi("/v1/rerank"))(self.rerank)
        app.post("/v1/collections", status_code=201)(self.create_collection)
        app.get("/v1/collections")(self.list_collections)
        app.get("/v1/collections/{name}")(self.get_collection)
        app.delete("/v1/collections/{name}")(self.delete_collection)
        app.post("/v1/collections/{name}/items")(self.add_items)
        app.delete("/v1/collections/{name}/items/{item_id:path}")(self.delete_item)
        app.post("/v1/collections/{name}/search")(self.search_collection)
        app.post("/v1/collections/{name}/index")(self.index_collection)
        return app

    async def health(self) -> JSONResponse:
        """Readiness: 200 once every stage has a running replica; else 503 naming each stage
        that has none, and why."""
        unready = await self._stages.unready_stages()
        if unready:
            return JSONResponse({"status": "unavailable", "stages": unready}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def live(self) -> dict[str, str]:
        """Liveness: this Ingress replica answers."""
        return {"status": "ok"}

    async def models(self) -> ModelList:
        return ModelList(data=[await self._card()])

    async def model(self, model_id: str) -> ModelCard:
        self._check_model(model_id)
        return await self._card()

    async def embeddings(self, body: EmbeddingRequest) -> EmbeddingResponse:
        self._check_model(body.model)
        if body.dimensions is not None:
            size = (await self._card()).embedding_dimensions
            if body.dimensions != size:
                raise ApiError(400, f"dimensions is {body.dimensions}, but this model's embeddings "
                                    f"have {size}: SigLIP was not trained for shortened embeddings, "
                                    "so they are never cut. Leave dimensions out, or send "
                                    f"{size}.", param="dimensions", code="invalid_value")
        items = [body.input] if isinstance(body.input, str) else body.input
        embeddings = await self._embed(items, "input")
        data = [EmbeddingData(index=i, embedding=_to_wire(vector, body.encoding_format))
                for i, vector in enumerate(embeddings.vectors)]
        return EmbeddingResponse(data=data, model=self._model_name,
                                 usage=Usage.of(int(embeddings.tokens.sum())))

    async def classify(self, body: ClassifyRequest) -> ClassifyResponse:
        self._check_model(body.model)
        references = [item.image if isinstance(item, ImageItem) else item for item in body.input]
        templates = body.templates
        # Label by label, each in every template: a prompt ensemble's rows are consecutive.
        prompts = [template.replace("{}", label) for label in body.labels for template in templates]
        params = [f"input[{i}]" for i in range(len(references))]
        check_request_size(self._limits, images=len(references), labels=len(body.labels),
                           texts=[(f"labels[{i // len(templates)}]", prompt) for i, prompt in enumerate(prompts)])
        async def classify_calls(attempt: StageAttempt):
            images, prompt_vectors = await attempt.results([self._encode_images(attempt, references, params),
                                                            self._encode_texts(attempt, prompts)])
            labels = prompt_vectors.group_means(len(templates)) if len(templates) > 1 else prompt_vectors
            return await attempt.send(self._fusion.classify, labels, body.top_k, images)

        [(rankings, tokens)] = await self._run(lambda attempt: [classify_calls(attempt)],
                                               self._stages_for(True, True, self._fusion))
        data = []
        for index, ranking in enumerate(rankings):
            predictions = [LabelScore(label=body.labels[r.index], score=r.score) for r in ranking]
            data.append(Classification(index=index, prediction=predictions[0].label,
                                       score=predictions[0].score, predictions=predictions))
        return ClassifyResponse(model=self._model_name, data=data, usage=Usage.of(tokens))

    async def rerank(self, body: RerankRequest) -> RerankResponse:
        self._check_model(body.model)
        query_reference = _image_reference(body.query)
        is_image = [_image_reference(item) is not None for item in body.documents]
        query_texts = [] if query_reference is not None else [("query", _text(body.query))]
        check_request_size(self._limits, images=sum(is_image) + (query_reference is not None),
                           texts=query_texts + _texts_with_params(body.documents, is_image, "documents"),
                           documents=len(body.documents))

        async def rerank_calls(attempt: StageAttempt):
            images, texts = self._encode_items(attempt, body.documents, is_image, "documents")
            if query_reference is not None:
                query, images, documents = await attempt.results([
                    self._encode_images(attempt, [query_reference], ["query"]), images,
                    self._encode_texts(attempt, texts) if texts else None])
            else:  # the query and the text documents in one call
                query_and_documents, images = await attempt.results([
                    self._encode_texts(attempt, [_text(body.query), *texts]), images])
                query, documents = query_and_documents.split([1, len(texts)])
            return await attempt.send(self._fusion.rerank, query, is_image,
                                      documents if texts else None, body.top_n, images)

        stages = self._stages_for(any(is_image) or query_reference is not None,
                                  not all(is_image) or query_reference is None, self._fusion)
        [(ranking, tokens)] = await self._run(lambda attempt: [rerank_calls(attempt)], stages)
        results = []
        for ranked in ranking:
            document = body.documents[ranked.index] if body.return_documents else None
            if isinstance(document, str):
                document = TextItem(text=document)
            results.append(RerankResult(index=ranked.index, relevance_score=ranked.score,
                                        document=document))
        return RerankResponse(model=self._model_name, results=results, usage=Usage.of(tokens))

    # ---- collections ---------------------------------------------------------------------

    async def _store(self, method: str, *args):
        """A call to the Collections stage, retried like any stage call; its refusals become
        the API's 4xx."""
        if self._collections is None:
            raise ApiError(404, "Collections are turned off on this server (collections.enabled).",
                           code="collections_disabled")
        call = getattr(self._collections, method)
        try:
            [result] = await self._run(lambda attempt: [attempt.send(call, *args)], [self._collections])
        except Exception as error:
            if refused := root_cause(error, CollectionError):
                raise _refused(refused) from None
            raise
        return result

    async def _collection_model(self) -> CollectionModel:
        """What identifies this server's vectors: the weights and the dtype they run in."""
        card = await self._card()
        return CollectionModel(self._model_name, f"{card.fingerprint}/{card.dtype}", card.embedding_dimensions)

    async def create_collection(self, body: CollectionCreateRequest) -> Collection:
        return _collection(await self._store("create", body.name, await self._collection_model()))

    async def list_collections(self) -> CollectionList:
        return CollectionList(data=[_collection(info) for info in await self._store("list")])

    async def get_collection(self, name: str) -> Collection:
        return _collection(await self._store("describe", name))

    async def delete_collection(self, name: str) -> CollectionDeleted:
        await self._store("drop", name)
        return CollectionDeleted(name=name)

    async def add_items(self, name: str, body: CollectionItemsRequest) -> CollectionItemsResponse:
        """Embeds every item, then stores them all in one commit: a bad item fails the request
        before anything is stored."""
        self._check_model(body.model)
        first_index: dict[str, int] = {}
        for index, item in enumerate(body.items):
            if (earlier := first_index.setdefault(item.id, index)) != index:
                raise ApiError(400, f"items[{index}].id repeats items[{earlier}].id ('{item.id[:80]}').",
                               param=f"items[{index}].id", code="duplicate_id")
            if item.metadata is not None and len(json.dumps(item.metadata)) > MAX_METADATA_BYTES:
                raise ApiError(400, f"items[{index}].metadata is over {MAX_METADATA_BYTES} bytes as JSON.",
                               param=f"items[{index}].metadata", code="metadata_too_large")
        model = await self._collection_model()
        await self._store("check", name, model)  # an unknown collection costs no encoding
        embeddings = await self._embed([ImageItem(image=item.image) if item.image is not None else item.text
                                        for item in body.items], "items")
        await self._store("upsert", name, model, [item.id for item in body.items], embeddings.vectors,
                          ["image" if item.image is not None else "text" for item in body.items],
                          [item.metadata for item in body.items])
        return CollectionItemsResponse(data=[CollectionItem(id=item.id) for item in body.items],
                                       usage=Usage.of(int(embeddings.tokens.sum())))

    async def delete_item(self, name: str, item_id: str) -> CollectionItemDeleted:
        if not await self._store("delete", name, item_id):
            raise ApiError(404, f"The collection '{name}' has no item '{item_id[:80]}'.",
                           param="id", code="item_not_found")
        return CollectionItemDeleted(id=item_id)

    async def search_collection(self, name: str, body: CollectionSearchRequest) -> CollectionSearchResponse:
        """The items nearest the query, scored exactly as /v1/rerank scores them."""
        self._check_model(body.model)
        try:
            filter_clause(body.filter)
        except CollectionError as error:
            raise _refused(error) from None
        model = await self._collection_model()
        await self._store("check", name, model)
        query = await self._embed([body.query], "query")
        matches = await self._store("search", name, model, query.vectors[0], body.top_k, body.filter,
                                    body.include_metadata)
        return CollectionSearchResponse(
            model=self._model_name, usage=Usage.of(int(query.tokens.sum())),
            data=[SearchMatch(id=m.id, score=m.score, metadata=m.metadata)
                  for m in matches])

    async def index_collection(self, name: str) -> Collection:
        """Builds the approximate index now (seconds to minutes); search then uses it."""
        await self._store("build_index", name)
        return _collection(await self._store("describe", name))
