"""Hostile input over HTTP: whatever a client sends, it gets a 4xx in OpenAI's error body, the
server keeps answering everyone else correctly, and memory stays bounded.

Most tests run on the session app (open, default limits, loopback URLs refused). A copy with
API keys, small limits, loopback allowed for image URLs and a one-slot preprocessor queue runs
beside it, so that keys, limits and backpressure are shown through the same YAML and
environment a user would set."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.apps import app_beside, assert_openai_error, deployment_config, wait_until_running
from tests.support.hostile import png_bomb, png_header
from tests.support.image_server import image_server
from tests.support.photos import data_uri, encode, photos

APP = "siglip-guarded"
ROUTE = "/guarded"
KEY = "test-key-7f3a"
RAW = photos()[0][1]
TRIED = {"requests": 0, "5xx": 0}  # for the closing summary


@pytest.fixture(scope="module")
def photo_server():
    with image_server(RAW) as url:
        yield url


def _guarded(app: dict) -> None:
    app["runtime_env"] = {"env_vars": {"SIGLIP_API_KEYS": f"other-key,{KEY}"}}
    app["args"]["limits"] = {"max_body_bytes": 300_000, "max_images_per_request": 2,
                             "max_text_chars": 100}
    app["args"]["image_urls"] = {"allowed_hosts": ["127.0.0.1"], "total_timeout_s": 5}
    for deployment in app["deployments"]:
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
    deployment_config(app, "ImagePreprocessor").update(max_ongoing_requests=1, max_queued_requests=1)


@pytest.fixture(scope="module")
def guarded_url(serve_url, serve_config):
    with app_beside(serve_config, APP, ROUTE, _guarded):
        wait_until_running(APP)
        yield serve_url + ROUTE


def _post(url: str, path: str, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(url + path, headers=headers, timeout=60, **kwargs)
    TRIED["requests"] += 1
    TRIED["5xx"] += response.status_code >= 500
    return response


# ---- API keys -------------------------------------------------------------------------------

def test_keys_guard_v1_and_the_openai_client_works_with_one(guarded_url, reference):
    for key in (None, "wrong-key"):
        error = assert_openai_error(_post(guarded_url, "/v1/embeddings", key, json={"input": "a"}), 401)
        assert error["code"] == "invalid_api_key"
    assert httpx.get(guarded_url + "/v1/models").status_code == 401
    assert httpx.get(guarded_url + "/health").json() == {"status": "ok"}

    client = openai.OpenAI(base_url=guarded_url + "/v1", api_key=KEY)
    embedding = client.embeddings.create(model=client.models.list().data[0].id, input=["a cat"])
    np.testing.assert_allclose(embedding.data[0].embedding, reference.text_embeddings(["a cat"])[0],
                               rtol=0, atol=1e-5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded_url + "/v1", api_key="wrong-key").models.list()


# ---- limits ---------------------------------------------------------------------------------

def test_limits_from_the_yaml_name_themselves(guarded_url):
    small = data_uri(encode(Image.new("RGB", (8, 8)), "PNG"))
    error = assert_openai_error(_post(guarded_url, "/v1/classify",
                                      json={"input": [small] * 3, "labels": ["a"]}), 400)
    assert "3 images; the limit is 2 (max_images_per_request)" in error["message"]
    error = assert_openai_error(_post(guarded_url, "/v1/embeddings", json={"input": ["x" * 101]}), 400,
                                param="input[0]")
    assert "(max_text_chars)" in error["message"]
    error = assert_openai_error(_post(guarded_url, "/v1/embeddings", json={"input": ["y" * 400_000]}), 413)
    assert "300000 bytes (max_body_bytes)" in error["message"]


# ---- backpressure --------------------------------------------------------------------------

def test_a_full_queue_answers_503_with_retry_after_quickly(guarded_url, reference):
    raw = dict(photos())["retina-large.jpg"]  # the slowest photo to decode: the one slot fills
    expected = reference.image_embeddings([raw])[0]
    payload = {"input": [{"image": data_uri(raw)}]}

    def one(_):  # not counted in TRIED: these 503s are the point, not a fault
        started = time.monotonic()
        response = httpx.post(guarded_url + "/v1/embeddings", json=payload, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"})
        return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(24)))
    rejected = [(r, seconds) for r, seconds in results if r.status_code != 200]
    admitted = [r for r, _ in results if r.status_code == 200]
    assert rejected and admitted
    for response, seconds in rejected:
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "overloaded_error"
        assert seconds < 10
    for response in admitted:
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, rtol=0, atol=1e-5)


# ---- image URLs -----------------------------------------------------------------------------

def test_an_allowed_image_url_equals_the_same_image_sent_inline(guarded_url, photo_server, reference):
    body = _post(guarded_url, "/v1/embeddings",
                 json={"input": [{"image": f"{photo_server}/photo"}, {"image": data_uri(RAW)}]}).json()
    expected = reference.image_embeddings([RAW])[0]
    for item in body["data"]:
        np.testing.assert_allclose(item["embedding"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("path, reason", [("/missing", "HTTP 404"), ("/redirect-loop", "redirects"),
                                          ("/trickle", "timed out")])
def test_a_failed_fetch_names_the_input_and_the_reason(guarded_url, photo_server, path, reason):
    error = assert_openai_error(_post(guarded_url, "/v1/classify", json={
        "input": [data_uri(RAW), photo_server + path], "labels": ["a"]}), 400, param="input[1]")
    assert reason in error["message"]


def test_loopback_and_metadata_urls_are_refused_by_default(client, photo_server):
    for url in (photo_server + "/photo", "http://169.254.169.254/latest/meta-data/",
                "file:///etc/passwd", "gopher://127.0.0.1:25/"):
        error = assert_openai_error(client.post("/v1/classify", json={"input": [url], "labels": ["a"]}),
                                    400, param="input[0]")
        assert "not a public address" in error["message"] or "scheme" in error["message"], error


# ---- decompression bombs and memory ---------------------------------------------------------

def _preprocessor_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "ServeReplica:siglip:ImagePreprocessor" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    assert found, "no ImagePreprocessor replica process found"
    return found


MEMORY_BOUND_MIB = 150


def test_fifty_concurrent_decompression_bombs_leave_memory_bounded(client, reference):
    """Each bomb is a valid 12000x12000 PNG: 140 KB on the wire, 144 MB gray or 432 MB RGB
    once decoded, below Pillow's own bomb guard (179 MP). Decoded, 50 at once would need ~20 GB."""
    bomb = {"input": [{"image": data_uri(png_bomb(12_000, 12_000))}]}
    processes = _preprocessor_processes()
    before = {p.pid: p.memory_info().rss for p in processes}
    peak = dict(before)

    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(client.post, "/v1/embeddings", json=bomb) for _ in range(50)]
        while not all(f.done() for f in futures):
            for p in processes:
                peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
            time.sleep(0.02)
    for future in futures:
        error = assert_openai_error(future.result(), 400, param="input[0]")
        assert "(max_image_pixels)" in error["message"]
    growth_mib = max(peak[pid] - before[pid] for pid in before) / 2**20
    print(f"\nImagePreprocessor RSS growth under 50 concurrent bombs: {growth_mib:.1f} MiB")
    assert growth_mib < MEMORY_BOUND_MIB
    _assert_still_serving(client, reference)


# ---- generated hostile requests -------------------------------------------------------------

def _assert_still_serving(client: httpx.Client, reference) -> None:
    body = client.post("/v1/embeddings", json={"input": [{"image": data_uri(RAW)}]}).json()
    np.testing.assert_allclose(body["data"][0]["embedding"], reference.image_embeddings([RAW])[0],
                               rtol=0, atol=1e-5)


def _assert_4xx_or_ok(response: httpx.Response) -> None:
    TRIED["requests"] += 1
    TRIED["5xx"] += response.status_code >= 500
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)


VALID = [encode(Image.new("RGB", (24, 16), "red"), fmt) for fmt in ("PNG", "JPEG", "GIF")]
broken_images = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda raw, cut: raw[:cut], st.sampled_from(VALID), st.integers(0, 200)),
    st.builds(lambda raw, at, junk: raw[:at] + junk + raw[at + len(junk):],
              st.sampled_from(VALID), st.integers(0, 200), st.binary(min_size=1, max_size=32)),
    st.builds(png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
).map(lambda raw: data_uri(raw))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
TEMPLATES = {"/v1/embeddings": {"input": ["a"]}, "/v1/classify": {"input": [data_uri(VALID[0])], "labels": ["a"]},
             "/v1/rerank": {"query": "a", "documents": ["b"]}}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(path=st.sampled_from(sorted(TEMPLATES)), image=broken_images)
def test_broken_images_get_4xx(client, path, image):
    body = {"/v1/embeddings": {"input": [{"image": image}]}, "/v1/classify": {"input": [image], "labels": ["a"]},
            "/v1/rerank": {"query": "a", "documents": [{"image": image}]}}[path]
    _assert_4xx_or_ok(client.post(path, json=body))


@FUZZ
@given(path=st.sampled_from(sorted(TEMPLATES)), field=st.sampled_from(["input", "labels", "query", "documents",
                                                                       "model", "top_k", "top_n", "encoding_format",
                                                                       "hypothesis_template", "unknown"]),
       value=json_values)
def test_wrong_types_get_4xx(client, path, field, value):
    _assert_4xx_or_ok(client.post(path, json={**TEMPLATES[path], field: value}))


@FUZZ
@given(path=st.sampled_from(sorted(TEMPLATES)), body=st.one_of(
    json_values.map(json.dumps),
    st.integers(1, 100_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 100_000).map(lambda depth: '{"input":' * depth + "1" + "}" * depth),
    st.builds(lambda text, cut: text[:cut], st.sampled_from([json.dumps(t) for t in TEMPLATES.values()]),
              st.integers(0, 40)),
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")),
))
def test_any_body_gets_4xx_or_an_answer(client, path, body):
    _assert_4xx_or_ok(client.post(path, content=body.encode("utf-8", "surrogatepass"),
                                  headers={"Content-Type": "application/json"}))


def test_after_all_of_it_the_server_answers_correctly(client, reference):
    _assert_still_serving(client, reference)
    print(f"\nhostile requests tried over HTTP in this module: {TRIED['requests']}, 5xx: {TRIED['5xx']}")
    assert TRIED["5xx"] == 0
