"""The request gate, on a bare FastAPI app (no Ray): API keys and the body-size limit act
before the body is read, and every refusal is in OpenAI's error shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from deployments.config import InputLimits
from deployments.errors import ApiError
from deployments.gate import ApiKeys, GateSettings, RequestGate, check_request_size, key_digest

KEYS = ApiKeys(map(key_digest, ["key-one", "key-two"]))


def _app(settings: GateSettings) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGate, settings=settings)

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def _call(settings: GateSettings, method: str, path: str, **kwargs) -> httpx.Response:
    async def run():
        transport = httpx.ASGITransport(app=_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(run())


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"},
                                     {"Authorization": "Basic key-one"}, {"Authorization": "Bearer "}])
def test_v1_without_a_valid_key_is_401(headers):
    response = _call(GateSettings(KEYS, 1000), "POST", "/v1/echo", content=b"{}", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_any_configured_key_passes_and_health_stays_open():
    for key in ("key-one", "key-two"):
        response = _call(GateSettings(KEYS, 1000), "POST", "/v1/echo", content=b"abc",
                         headers={"Authorization": f"Bearer {key}"})
        assert response.json() == {"bytes": 3}
    assert _call(GateSettings(KEYS, 1000), "GET", "/health").json() == {"status": "ok"}
    assert _call(GateSettings(None, 1000), "POST", "/v1/echo", content=b"abc").json() == {"bytes": 3}


def test_a_body_over_the_limit_is_413_declared_or_streamed():
    declared = _call(GateSettings(None, 1000), "POST", "/v1/echo", content=b"x" * 1001)
    assert declared.status_code == 413
    assert "1000 bytes (max_body_bytes)" in declared.json()["error"]["message"]

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 200
    streamed = _call(GateSettings(None, 1000), "POST", "/v1/echo", content=chunks())
    assert streamed.status_code == 413
    assert _call(GateSettings(None, 1000), "POST", "/v1/echo", content=b"x" * 1000).json() == {"bytes": 1000}


def test_keys_come_from_the_environment_or_a_file(tmp_path):
    assert ApiKeys.from_environment({}) is None
    keys = ApiKeys.from_environment({"SIGLIP_API_KEYS": " a , b,,"})
    assert len(keys) == 2 and keys.accepts("a") and keys.accepts("b") and not keys.accepts("a,b")
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-11\nfile-key\n\n")
    keys = ApiKeys.from_environment({"SIGLIP_API_KEYS_FILE": str(path)})
    assert len(keys) == 1 and keys.accepts("file-key") and not keys.accepts("# rotated 2026-11")
    with pytest.raises(ValueError, match="hold no key"):
        ApiKeys.from_environment({"SIGLIP_API_KEYS": " , "})


def test_keys_may_come_as_their_digests_alone():
    digests = ",".join(key_digest(key).hex() for key in ("one", "two"))
    keys = ApiKeys.from_environment({"SIGLIP_API_KEY_SHA256": digests, "SIGLIP_API_KEYS": "three"})
    assert len(keys) == 3 and all(map(keys.accepts, ("one", "two", "three")))
    assert not keys.accepts(key_digest("one").hex())
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        ApiKeys.from_environment({"SIGLIP_API_KEY_SHA256": "abc"})


@pytest.mark.parametrize("counts, limit", [
    ({"images": 4}, "4 images; the limit is 3 (max_images_per_request)"),
    ({"labels": 5}, "5 labels; the limit is 4 (max_labels_per_request)"),
    ({"documents": 6}, "6 documents; the limit is 5 (max_documents_per_request)"),
    ({"texts": [("input[0]", "t")] * 8}, "8 texts; the limit is 7 (max_texts_per_request)"),
    ({"texts": [("input[0]", "ok"), ("input[1]", "x" * 11)]},
     "input[1] has 11 characters; the limit is 10 (max_text_chars)"),
])
def test_request_size_limits_name_the_limit_and_its_value(counts, limit):
    limits = InputLimits(max_images_per_request=3, max_labels_per_request=4, max_documents_per_request=5,
                         max_texts_per_request=7, max_text_chars=10)
    check_request_size(limits, images=3, texts=[("input[0]", "x" * 10)], labels=4, documents=5)
    with pytest.raises(ApiError) as raised:
        check_request_size(limits, **{"images": 0, "texts": [], **counts})
    assert raised.value.status == 400 and limit in str(raised.value)
