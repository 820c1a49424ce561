"""Ingress stage: the HTTP API. Validates requests, fans work out to the other stages and
assembles responses. Every stage call's result comes back to it and goes on by value, never
as another call's unawaited argument: with those, Ray 2.60 killed an Ingress replica, and
every request in it, when an encoder replica died under load (a failed reference count in
Ray's dependency resolver; ray-project/ray#56123 is the same race, for cancels). Text
embeddings that come back are kept: a known label set never reaches the text encoder again."""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at run time.
import asyncio
import base64
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import (NodeDiedError, ObjectLostError, RayActorError, RayTaskError,
                            WorkerCrashedError)
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import InputLimits
from deployments.core.cache import LRUCache, get_or_compute
from deployments.core.embeddings import Embeddings
from deployments.core.images import ImageInputError
from deployments.errors import ApiError, error_response
from deployments.gate import ApiKeys, GateSettings, RequestGate, check_request_size
from deployments.metrics import TextCacheMetrics, stage_retries
from deployments.protocol import (Classification, ClassifyRequest, ClassifyResponse,
                                  EmbeddingData, EmbeddingRequest, EmbeddingResponse, ErrorInfo,
                                  ErrorResponse, ImageItem, Item, LabelScore, ModelCard,
                                  ModelList, RerankRequest, RerankResponse, RerankResult,
                                  TextItem, Usage)


logger = logging.getLogger("ray.serve")


# A replica that died, or its node, under a stage call. Inference is idempotent: send it again.
REPLICA_FAILURES = (RayActorError, ReplicaUnavailableError, WorkerCrashedError, NodeDiedError,
                    ObjectLostError)


@dataclass(frozen=True)
class RequestPolicy:
    timeout_s: float = 60
    retries: int = 3
    retry_backoff_s: float = 0.5
    images_per_call: int = 4
    texts_per_call: int = 8


def call_parts(count: int, most: int) -> list[slice]:
    """`count` items cut into as few calls of at most `most` items as hold them, of sizes that
    differ by one at most: 10 texts at 8 a call go as 5 and 5, not 8 and 2, so that calls on
    separate replicas finish together."""
    calls = -(-count // most)
    bounds = [count * call // calls for call in range(calls + 1)]
    return [slice(start, end) for start, end in zip(bounds, bounds[1:])]


_ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500)}

app = FastAPI(title="SigLIP serving",
              description="Zero-shot image classification, image and text embeddings and "
                          "image-text retrieval with SigLIP, in OpenAI-style JSON.",
              responses=_ERROR_RESPONSES)


def _replica_gate_settings() -> GateSettings:
    # Serve gives each replica its own copy of `app`, built before the Ingress instance; the
    # middleware finds that replica's settings (from its constructor) through Serve.
    return serve.get_replica_context().servable_object.gate_settings


app.add_middleware(RequestGate, settings=_replica_gate_settings)


@app.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status, error.info, error.retry_after_s)


_FIELD = re.compile(r"^[a-z_]+$")
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "json"}


def _param(location: tuple) -> str | None:
    """pydantic's error location as a field path (`input[2].image`), without the names of union
    members that pydantic puts in it."""
    path = ""
    for part in location[1:]:  # location[0] is "body"
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_NAMES:
            path += f".{part}" if path else part
    return path or None


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # With unions, pydantic reports one error per member; the deepest names the field best.
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        message = f"The body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        return error_response(400, ErrorInfo(message=message, type="invalid_request_error",
                                             code="invalid_json"))
    param = _param(tuple(first["loc"]))
    return error_response(400, ErrorInfo(message=f"{param or 'body'}: {first['msg']}",
                                         type="invalid_request_error", param=param,
                                         code="invalid_value"))


@app.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # Bad input is answered before this point; reaching here is a server fault, still in
    # OpenAI's shape so that clients parse it.
    logger.exception("Request failed: %s %s", request.method, request.url.path)
    return error_response(500, ErrorInfo(message=f"Internal error: {type(error).__name__}",
                                         type="internal_error", code="internal_error"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return error_response(error.status_code, ErrorInfo(message=str(error.detail), type=kind))


def _root_cause(error: BaseException, kind: type | tuple[type, ...]) -> BaseException | None:
    """The innermost exception of `kind` behind `error`, or None. Ray wraps a stage's exception
    once per stage it crosses (RayTaskError.cause), and Serve re-raises an upstream replica's
    death as a RayServeException whose __cause__ holds it."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            found = error
        error = error.cause if isinstance(error, RayTaskError) and error.cause else error.__cause__
    return found


def _image_reference(item: Item) -> str | None:
    return item.image if isinstance(item, ImageItem) else None


def _text(item: Item) -> str:
    return item.text if isinstance(item, TextItem) else item


def _texts_with_params(items: Sequence[Item], is_image: list[bool], param: str) -> list[tuple[str, str]]:
    return [(f"{param}[{i}]", _text(item)) for i, (item, flag) in enumerate(zip(items, is_image)) if not flag]


def _to_wire(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # OpenAI's encoding: little-endian float32 bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class StageAttempt:
    """The stage calls of one attempt at a request. A request has several calls in flight at
    once (its image parts, its texts), some in coroutines that send the next stage's call when
    one answers. So an attempt that is abandoned (the client went away, the timeout passed, a
    stage failed) cancels every call it sent and every coroutine that would send more: no stage
    works on for no one, and a burst of abandoned requests leaves no backlog."""

    def __init__(self) -> None:
        self._sent: list[DeploymentResponse] = []

    def send(self, method: DeploymentHandle, *args) -> DeploymentResponse:
        response = method.remote(*args)
        self._sent.append(response)
        return response

    async def results(self, responses: Sequence[Awaitable | None]) -> list:
        """The results of the responses, or of coroutines that send more calls through this
        attempt, in order (None stays None)."""
        tasks = [asyncio.ensure_future(r) for r in responses if r is not None]
        try:
            done = iter(await asyncio.gather(*tasks))
        except BaseException:  # CancelledError included: the client went away
            for task in tasks:  # so that no coroutine goes on to send a call
                task.cancel()
            for response in self._sent:
                response.cancel()
            raise
        return [None if r is None else next(done) for r in responses]


StageCalls = Callable[[StageAttempt], Sequence[Awaitable | None]]


async def run_stage_calls(stage_calls: StageCalls, policy: RequestPolicy) -> list:
    """Sends a request's stage calls through a StageAttempt and awaits them, within the request
    timeout. When a replica dies under them, all are sent again, from the first stage: the
    dead replica's results may be lost, and inference is idempotent. Stage errors become the
    client's ApiError."""
    try:
        return await asyncio.wait_for(_with_retries(stage_calls, policy), policy.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, f"The request did not finish within {policy.timeout_s:g} s.",
                       type="timeout_error", code="timeout") from None


async def _with_retries(stage_calls: StageCalls, policy: RequestPolicy) -> list:
    for attempt in range(policy.retries + 1):
        stage_attempt = StageAttempt()
        try:
            return await stage_attempt.results(stage_calls(stage_attempt))
        except Exception as error:
            if bad_image := _root_cause(error, ImageInputError):
                raise ApiError(400, str(bad_image), param=bad_image.param, code="invalid_image") from None
            if full := _root_cause(error, BackPressureError):
                raise ApiError(full.status_code, "The server is at capacity; retry later.",
                               type="overloaded_error", code="overloaded",
                               retry_after_s=full.retry_after_s or 1) from None
            cause = _root_cause(error, REPLICA_FAILURES)
            if cause is None:
                raise
            logger.warning("Attempt %d of %d lost a replica (%s); sending the request again.",
                           attempt + 1, policy.retries + 1, type(cause).__name__)
            stage_retries().inc()
            await asyncio.sleep(policy.retry_backoff_s * 2 ** attempt)
    raise ApiError(503, "A serving stage kept failing; retry later.", type="service_unavailable",
                   code="stage_unavailable", retry_after_s=5)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class Ingress:
    def __init__(self, served_model_name: str, policy: RequestPolicy, limits: InputLimits,
                 text_cache_size: int, preprocessor: DeploymentHandle, vision: DeploymentHandle,
                 text: DeploymentHandle, fusion: DeploymentHandle):
        self._model_name = served_model_name
        self._policy = policy
        self._limits = limits
        api_keys = ApiKeys.from_environment()
        if api_keys is None:
            logger.warning("No API keys configured: /v1 answers anyone who can reach it.")
        else:
            logger.info("%d API key(s) configured: /v1 needs 'Authorization: Bearer <key>'.", len(api_keys))
        self.gate_settings = GateSettings(api_keys, limits.max_body_bytes)
        self._created = int(time.time())
        self._text_cache: LRUCache[str, Embeddings] = LRUCache(text_cache_size,
                                                               TextCacheMetrics().record)
        self._preprocessor = preprocessor
        self._vision = vision
        self._text = text
        self._fusion = fusion

    # ---- stage calls ---------------------------------------------------------------------

    async def _encode_images(self, attempt: StageAttempt, references: list[str],
                             params: list[str]) -> Embeddings:
        """Embeddings of the images, in parts of at most `images_per_call`: a request's parts
        decode and encode in parallel, on as many replicas as there are."""
        async def encode(part: slice) -> Embeddings:
            pixels = await attempt.send(self._preprocessor.preprocess, references[part], params[part])
            return await attempt.send(self._vision.encode, pixels)

        parts = call_parts(len(references), self._policy.images_per_call)
        return Embeddings.concatenate(await attempt.results([encode(part) for part in parts]))

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

    def _check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self._model_name:
            raise ApiError(404, f"The model '{requested}' does not exist; this server serves "
                                f"'{self._model_name}'.", param="model", code="model_not_found")

    # ---- routes --------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self._model_name, created=self._created)])

    @app.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest) -> EmbeddingResponse:
        self._check_model(body.model)
        items = [body.input] if isinstance(body.input, str) else body.input
        is_image = [_image_reference(item) is not None for item in items]
        check_request_size(self._limits, images=sum(is_image),
                           texts=_texts_with_params(items, is_image, "input"))
        def stage_calls(attempt: StageAttempt):
            images, texts = self._encode_items(attempt, items, is_image, "input")
            return [images, self._encode_texts(attempt, texts) if texts else None]

        images, texts = await run_stage_calls(stage_calls, self._policy)
        embeddings = Embeddings.interleave(is_image, images, texts)
        data = [EmbeddingData(index=i, embedding=_to_wire(vector, body.encoding_format))
                for i, vector in enumerate(embeddings.vectors)]
        return EmbeddingResponse(data=data, model=self._model_name,
                                 usage=Usage.of(int(embeddings.tokens.sum())))

    @app.post("/v1/classify")
    async def classify(self, body: ClassifyRequest) -> ClassifyResponse:
        self._check_model(body.model)
        references = [item.image if isinstance(item, ImageItem) else item for item in body.input]
        prompts = [body.hypothesis_template.replace("{}", label) for label in body.labels]
        params = [f"input[{i}]" for i in range(len(references))]
        check_request_size(self._limits, images=len(references), labels=len(prompts),
                           texts=[(f"labels[{i}]", prompt) for i, prompt in enumerate(prompts)])
        async def classify_calls(attempt: StageAttempt):
            images, labels = await attempt.results([self._encode_images(attempt, references, params),
                                                    self._encode_texts(attempt, prompts)])
            return await attempt.send(self._fusion.classify, labels, body.top_k, images)

        [(rankings, tokens)] = await run_stage_calls(lambda attempt: [classify_calls(attempt)],
                                                     self._policy)
        data = []
        for index, ranking in enumerate(rankings):
            predictions = [LabelScore(label=body.labels[r.index], score=r.score) for r in ranking]
            data.append(Classification(index=index, prediction=predictions[0].label,
                                       score=predictions[0].score, predictions=predictions))
        return ClassifyResponse(model=self._model_name, data=data, usage=Usage.of(tokens))

    @app.post("/v1/rerank", response_model_exclude_none=True)
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

        [(ranking, tokens)] = await run_stage_calls(lambda attempt: [rerank_calls(attempt)],
                                                    self._policy)
        results = []
        for ranked in ranking:
            document = body.documents[ranked.index] if body.return_documents else None
            if isinstance(document, str):
                document = TextItem(text=document)
            results.append(RerankResult(index=ranked.index, relevance_score=ranked.score,
                                        document=document))
        return RerankResponse(model=self._model_name, results=results, usage=Usage.of(tokens))
