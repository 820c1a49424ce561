"""Form bodies become the JSON bodies the routes take (deployments/multipart.py), on a bare
FastAPI app without Ray: files become base64 images in place, repeated fields lists, and a
malformed part a 400 naming it. tests/test_client_dialects.py sends forms to the live graph."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from fastapi import FastAPI

from deployments.fastapi_app import build_fastapi_app
from deployments.gate import GateSettings
from deployments.multipart import form_openapi
from deployments.protocol import ClassifyRequest, EmbeddingRequest, RerankRequest

JPEG = b"\xff\xd8\xff not really a jpeg"
B64 = base64.b64encode(JPEG).decode()


def _app() -> FastAPI:
    app = build_fastapi_app(GateSettings(None, 10_000))

    @app.post("/v1/classify", openapi_extra=form_openapi("/v1/classify"))
    async def classify(body: ClassifyRequest) -> dict:
        return body.model_dump(exclude_defaults=True)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict:
        return body.model_dump(exclude_defaults=True)

    @app.post("/v1/rerank")
    async def rerank(body: RerankRequest) -> dict:
        return body.model_dump(exclude_defaults=True)

    return app


def _post(path: str, data=None, files=None, **kwargs) -> httpx.Response:
    async def call():
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, data=data, files=files, **kwargs)
    return asyncio.run(call())


def test_classify_as_curl_sends_it():
    response = _post("/v1/classify", data={"labels": ["cat", "dog"], "top_k": "1"},
                     files=[("image", ("cat.jpg", JPEG, "image/jpeg"))])
    assert response.status_code == 200, response.text
    assert response.json() == {"input": [{"image": B64}], "labels": ["cat", "dog"], "top_k": 1}


def test_files_and_texts_keep_their_order_and_repeated_templates_make_an_ensemble():
    files = [("input", (None, "a text")), ("image", ("a.jpg", JPEG, "image/jpeg")),
             ("input", (None, "another")), ("input", ("b.jpg", JPEG, "image/jpeg"))]
    body = _post("/v1/embeddings", files=files + [("dimensions", (None, "768"))]).json()
    assert body == {"input": ["a text", {"image": B64}, "another", {"image": B64}], "dimensions": 768}

    one = _post("/v1/classify", files=[("input", (None, "https://example.com/a.jpg")), ("labels", (None, "cat")),
                                       ("hypothesis_template", (None, "a {}"))]).json()
    assert one["hypothesis_template"] == "a {}" and one["input"] == ["https://example.com/a.jpg"]
    two = _post("/v1/classify", files=[("image", ("a.jpg", JPEG, "image/jpeg")), ("labels", (None, "cat")),
                                       ("hypothesis_template", (None, "a {}")),
                                       ("hypothesis_template", (None, "the {}"))]).json()
    assert two["hypothesis_template"] == ["a {}", "the {}"]


def test_rerank_takes_an_image_query_and_image_documents():
    body = _post("/v1/rerank", files=[("query", ("q.jpg", JPEG, "image/jpeg")), ("documents", (None, "a cat")),
                                      ("image", ("d.jpg", JPEG, "image/jpeg")),
                                      ("return_documents", (None, "true"))]).json()
    assert body == {"query": {"image": B64}, "documents": ["a cat", {"image": B64}], "return_documents": True}


@pytest.mark.parametrize("files, param, words", [
    ([("labels", (None, "cat")), ("picture", ("a.jpg", JPEG, "image/jpeg"))], "picture", "Unknown form field"),
    ([("labels", ("l.txt", b"cat", "text/plain")), ("image", ("a.jpg", JPEG, "image/jpeg"))], "labels", "not a file"),
    ([("labels", (None, "cat")), ("image", (None, "not a file"))], "image", "must be a file"),
    ([("labels", (None, "cat")), ("image", ("a.jpg", JPEG, "image/jpeg")), ("top_k", (None, "1")),
      ("top_k", (None, "2"))], "top_k", "more than once"),
    ([("labels", (None, "cat")), ("image", ("a.jpg", JPEG, "image/jpeg")), ("top_k", (None, "many"))],
     "top_k", "integer"),
])
def test_a_malformed_part_gets_a_400_naming_it(files, param, words):
    response = _post("/v1/classify", files=files)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_an_unreadable_form_and_an_oversized_one_are_refused():
    broken = _post("/v1/classify", content=b"--xyz\r\nnot a part", headers={
        "content-type": "multipart/form-data; boundary=xyz"})
    assert broken.status_code == 400 and "cannot be read" in broken.json()["error"]["message"]
    large = _post("/v1/classify", data={"labels": ["cat"]}, files=[("image", ("a.jpg", b"x" * 20_000, "image/jpeg"))])
    assert large.status_code == 413


def test_the_openapi_page_shows_the_form_beside_the_json_body():
    content = _app().openapi()["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    fields = content["multipart/form-data"]["schema"]["properties"]
    assert fields["image"]["items"]["format"] == "binary" and "labels" in fields


def test_the_app_starts_through_the_middleware():
    """Lifespan events pass the middleware untouched (a Request made of one raises)."""
    async def lifespan() -> list[str]:
        messages, sent = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}], []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message["type"])

        await _app()({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        return sent
    assert asyncio.run(lifespan()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
