"""The HTTP API, end to end through the Ray Serve graph deployed from serve_config.yaml.

Every number is compared with transformers' SiglipModel and its processor (float32, CPU) on real
photographs. The checkpoint has random weights: its scores are meaningless, but must be equal."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from ray import serve

from deployments.core.checkpoint import weights_bytes
from deployments.sizing import Cluster, size_graph
from deployments.testing.local_cluster import ask_each_replica
from tests.support.apps import embedding_vectors, USER_CONFIG_MODELS, assert_openai_error, text_encoder_cache_stats
from tests.support.photos import camera_sized_jpeg, data_uri, photos

ATOL = 1e-5
PHOTOS = photos()
RAWS = [raw for _, raw in PHOTOS]
URIS = [data_uri(raw) for raw in RAWS]
LABELS = ["cat", "rocket", "cup of coffee", "astronaut", "galaxy"]
TEMPLATE = "This is a photo of {}."
PROMPTS = [TEMPLATE.format(label) for label in LABELS]
APP = "siglip"


# ---- models and health ---------------------------------------------------------------------

def test_models_lists_the_served_model(client, tiny_checkpoint):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [tiny_checkpoint]


def test_health_and_openapi_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/classify", "/v1/rerank", "/v1/models", "/v1/models/{model_id}"} <= set(paths)
    for route in ("/v1/embeddings", "/v1/classify", "/v1/rerank"):
        assert {"application/json", "multipart/form-data"} <= set(paths[route]["post"]["requestBody"]["content"])


# ---- embeddings ----------------------------------------------------------------------------

def test_embeddings_of_mixed_texts_and_photos_equal_the_reference(client, reference):
    texts = ["a photo of a cat", "ANOTHER text, with punctuation!"]
    items = [texts[0], {"image": URIS[0]}, {"text": texts[1]}] + [{"image": uri} for uri in URIS[1:]]
    body = client.post("/v1/embeddings", json={"input": items}).json()
    vectors = embedding_vectors(body)
    assert [item["index"] for item in body["data"]] == list(range(len(items)))
    expected_texts = reference.text_embeddings(texts)
    expected_images = reference.image_embeddings(RAWS)
    np.testing.assert_allclose(vectors[[0, 2]], expected_texts, rtol=0, atol=ATOL)
    np.testing.assert_allclose(vectors[[1] + list(range(3, len(items)))], expected_images, rtol=0, atol=ATOL)
    patches = (64 // 8) ** 2
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(RAWS) * patches


def test_a_camera_sized_photo_alone_equals_the_reference(client, reference):
    """Alone in the preprocessor, its resize is split over a helper thread."""
    raw = camera_sized_jpeg()
    body = client.post("/v1/embeddings", json={"input": [{"image": data_uri(raw, "image/jpeg")}]}).json()
    np.testing.assert_allclose(embedding_vectors(body), reference.image_embeddings([raw]), rtol=0, atol=ATOL)


def test_embeddings_base64_is_little_endian_float32(client, reference):
    body = client.post("/v1/embeddings", json={"input": "a cat", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, reference.text_embeddings(["a cat"])[0], rtol=0, atol=ATOL)


def test_the_official_openai_client_works(serve_url, tiny_checkpoint, reference):
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    texts = ["a cat", "a rocket on its launch pad"]
    result = client.embeddings.create(model=tiny_checkpoint, input=texts)  # asks for base64
    vectors = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference.text_embeddings(texts), rtol=0, atol=ATOL)
    floats = client.embeddings.create(model=tiny_checkpoint, input="a cat", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], rtol=0, atol=1e-7)
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="some-other-model", input="a cat")


# ---- classify ------------------------------------------------------------------------------

def test_classify_equals_the_reference_on_real_photographs(client, reference):
    inputs = [uri if i % 2 else {"image": uri} for i, uri in enumerate(URIS)]
    body = client.post("/v1/classify", json={"input": inputs, "labels": LABELS}).json()
    expected = reference.scores(RAWS, PROMPTS)
    assert body["object"] == "list" and len(body["data"]) == len(RAWS)
    for index, (item, row) in enumerate(zip(body["data"], expected)):
        assert item["object"] == "classification" and item["index"] == index
        scores = {p["label"]: p["score"] for p in item["predictions"]}
        np.testing.assert_allclose([scores[label] for label in LABELS], row, rtol=0, atol=ATOL)
        ordered = [p["score"] for p in item["predictions"]]
        assert ordered == sorted(ordered, reverse=True)
        assert (item["prediction"], item["score"]) == (item["predictions"][0]["label"], ordered[0])


def test_classify_template_and_top_k(client, reference):
    template = "a blurry picture of the {}"
    body = client.post("/v1/classify", json={"input": URIS[:2], "labels": LABELS, "top_k": 2,
                                              "hypothesis_template": template}).json()
    expected = reference.scores(RAWS[:2], [template.format(label) for label in LABELS])
    for item, row in zip(body["data"], expected):
        assert len(item["predictions"]) == 2
        best = np.argsort(-row)[:2]
        assert [p["label"] for p in item["predictions"]] == [LABELS[i] for i in best]
        np.testing.assert_allclose([p["score"] for p in item["predictions"]], row[best], rtol=0, atol=ATOL)


def test_repeated_labels_come_from_the_ingress_cache_and_never_reach_the_text_encoder(client, reference):
    labels = ["a label only this test uses", "and its sibling"]
    request = {"input": URIS[:1], "labels": labels}
    before = text_encoder_cache_stats(APP)
    first = client.post("/v1/classify", json=request).json()
    between = text_encoder_cache_stats(APP)
    again = client.post("/v1/classify", json=request).json()
    assert text_encoder_cache_stats(APP) == between
    assert between["misses"] - before["misses"] == 2
    assert (again["data"], again["usage"]) == (first["data"], first["usage"])
    expected = reference.scores(RAWS[:1], [TEMPLATE.format(label) for label in labels])[0]
    np.testing.assert_allclose([p["score"] for p in again["data"][0]["predictions"]],
                               np.sort(expected)[::-1], rtol=0, atol=ATOL)


# ---- rerank --------------------------------------------------------------------------------

def test_rerank_text_query_over_images_and_texts(client, reference):
    # A bare string is a text in rerank, even when it reads like an image reference.
    looks_like_an_image = data_uri(RAWS[2])[:200]
    documents = [{"image": URIS[0]}, "a cup of coffee", {"text": "a rocket"}, looks_like_an_image, {"image": URIS[3]}]
    body = client.post("/v1/rerank", json={"query": "a photo of a cat", "documents": documents,
                                           "return_documents": True}).json()
    query = reference.text_embeddings(["a photo of a cat"])
    expected = np.concatenate([
        reference.pair_score(query, reference.image_embeddings([RAWS[0]]))[0],
        reference.pair_score(query, reference.text_embeddings(["a cup of coffee", "a rocket", looks_like_an_image]))[0],
        reference.pair_score(query, reference.image_embeddings([RAWS[3]]))[0],
    ])
    # The scores SiglipModel's own forward gives for the text-image pairs:
    np.testing.assert_allclose(expected[[0, 4]], reference.scores([RAWS[0], RAWS[3]], ["a photo of a cat"])[:, 0],
                               rtol=0, atol=ATOL)
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(documents))], expected, rtol=0, atol=ATOL)
    assert [r["index"] for r in body["results"]] == list(np.argsort(-expected, kind="stable"))
    returned = {r["index"]: r["document"] for r in body["results"]}
    assert returned[1] == {"text": "a cup of coffee"} and returned[4] == {"image": URIS[3]}


def test_rerank_image_query_over_texts_and_images_with_top_n(client, reference):
    documents = LABELS + [{"image": uri} for uri in URIS[:3]]
    body = client.post("/v1/rerank", json={"query": {"image": URIS[4]}, "documents": documents,
                                           "top_n": 3}).json()
    query = reference.image_embeddings([RAWS[4]])
    expected = np.concatenate([reference.pair_score(query, reference.text_embeddings(LABELS))[0],
                               reference.pair_score(query, reference.image_embeddings(RAWS[:3]))[0]])
    assert [r["index"] for r in body["results"]] == list(np.argsort(-expected, kind="stable")[:3])
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]],
                               np.sort(expected)[::-1][:3], rtol=0, atol=ATOL)
    assert all("document" not in r or r["document"] is None for r in body["results"])


def test_images_spread_over_several_calls_keep_their_places(client, reference, serve_config):
    """A request's images go out in calls of images_per_call; results come back in its order."""
    documents = ["a cup of coffee", *({"image": uri} for uri in URIS[:6]), "a rocket",
                 *({"image": uri} for uri in URIS[6:9])]
    images = [i for i, document in enumerate(documents) if isinstance(document, dict)]
    assert len(images) > 2 * serve_config["applications"][0]["args"]["images_per_call"]
    body = client.post("/v1/rerank", json={"query": "a photo of a cat", "documents": documents}).json()
    query = reference.text_embeddings(["a photo of a cat"])
    expected = np.empty(len(documents))
    expected[images] = reference.pair_score(query, reference.image_embeddings(RAWS[:9]))[0]
    expected[[0, 7]] = reference.pair_score(query, reference.text_embeddings(["a cup of coffee", "a rocket"]))[0]
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(documents))], expected, rtol=0, atol=ATOL)


def test_texts_spread_over_several_calls_keep_their_places(client, reference, serve_config):
    """A request's texts that no cache holds go out in calls of at most texts_per_call;
    embeddings come back in its order, a repeated text's included."""
    fresh = [f"spread test text number {i}" for i in range(19)]
    assert len(fresh) > 2 * serve_config["applications"][0]["args"]["texts_per_call"]
    texts = [*fresh, fresh[3], PROMPTS[0]]
    body = client.post("/v1/embeddings", json={"input": texts}).json()
    np.testing.assert_allclose(embedding_vectors(body), reference.text_embeddings(texts), rtol=0, atol=ATOL)


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,param", [
    ("/v1/embeddings", {}, "input"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": 5}, "input"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ("/v1/embeddings", {"input": ["a", {"imag": "x"}]}, None),
    ("/v1/classify", {"input": URIS[:1]}, "labels"),
    ("/v1/classify", {"input": URIS[:1], "labels": ["a"], "top_k": 0}, "top_k"),
    ("/v1/classify", {"input": URIS[:1], "labels": ["a"], "hypothesis_template": "no slot"},
     "hypothesis_template"),
    ("/v1/rerank", {"query": "a", "documents": []}, "documents"),
    ("/v1/rerank", {"query": "a", "documents": ["b"], "top_n": -1}, "top_n"),
])
def test_invalid_fields_get_400_naming_the_field(client, path, body, param):
    assert_openai_error(client.post(path, json=body), 400, param)


def test_malformed_json_gets_400(client):
    response = client.post("/v1/classify", content=b'{"input": [', headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/embeddings", {"input": ["ok", {"image": "bm90IGFuIGltYWdl"}]}, "input[1]"),
    ("/v1/classify", {"input": [URIS[0], URIS[1], "%%%"], "labels": ["a"]}, "input[2]"),
    ("/v1/rerank", {"query": {"image": "AAAA"}, "documents": ["a"]}, "query"),
    ("/v1/rerank", {"query": "a", "documents": ["b", {"image": URIS[0][:200]}]}, "documents[1]"),
    # In the second of its image calls (images_per_call: 4): still named by its place in the request.
    ("/v1/embeddings", {"input": [{"image": uri} for uri in URIS[:5]] + ["text", {"image": "%%%"}]},
     "input[6]"),
])
def test_an_undecodable_image_gets_400_naming_its_index(client, path, body, param):
    response = client.post(path, json=body)
    assert_openai_error(response, 400, param)
    assert response.json()["error"]["code"] == "invalid_image"


def test_unknown_model_and_route_get_404(client):
    assert_openai_error(client.post("/v1/classify", json={"model": "nope", "input": URIS[:1],
                                                           "labels": ["a"]}), 404, "model")
    assert_openai_error(client.get("/v1/nothing-here"), 404)


# ---- concurrency and configuration ---------------------------------------------------------

def test_concurrent_mixed_requests_each_get_their_own_results(client, reference):
    """48 requests in flight at once, sharing batches, each checked against its own reference."""
    text_reference = reference.text_embeddings(PROMPTS + [f"text number {i}" for i in range(16)])
    image_reference = reference.image_embeddings(RAWS)
    score_reference = reference.scores(RAWS, PROMPTS)

    def one(i: int):
        photo = i % len(RAWS)
        kind = i % 3
        if kind == 0:
            body = client.post("/v1/embeddings", json={"input": [f"text number {i % 16}", {"image": URIS[photo]}]}).json()
            vectors = embedding_vectors(body)
            np.testing.assert_allclose(vectors[0], text_reference[len(PROMPTS) + i % 16], rtol=0, atol=ATOL)
            np.testing.assert_allclose(vectors[1], image_reference[photo], rtol=0, atol=ATOL)
        elif kind == 1:
            body = client.post("/v1/classify", json={"input": [URIS[photo]], "labels": LABELS}).json()
            scores = {p["label"]: p["score"] for p in body["data"][0]["predictions"]}
            np.testing.assert_allclose([scores[label] for label in LABELS], score_reference[photo], rtol=0, atol=ATOL)
        else:
            body = client.post("/v1/rerank", json={"query": PROMPTS[i % len(PROMPTS)],
                                                   "documents": [{"image": URIS[photo]}]}).json()
            np.testing.assert_allclose(body["results"][0]["relevance_score"],
                                       score_reference[photo, i % len(PROMPTS)], rtol=0, atol=ATOL)

    with ThreadPoolExecutor(max_workers=48) as pool:
        list(pool.map(one, range(48)))


@pytest.mark.parametrize("name", ["VisionEncoder", "TextEncoder"])
def test_configured_batching_reaches_the_replicas(serve_url, serve_config, name):
    configured = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == name)
    effective = serve.get_deployment_handle(name, APP).effective_config.remote().result()
    for key, value in configured["user_config"].items():
        assert effective[key] == value, key
    batching = USER_CONFIG_MODELS[name].model_validate(configured["user_config"])
    assert effective["batcher_max_batch_size"] == batching.max_batch_size_on(effective["device"])
    assert effective["batcher_wait_timeout_s"] == configured["user_config"]["batch_wait_timeout_s"]
    assert effective["max_ongoing_requests"] == configured["max_ongoing_requests"]


def test_the_graph_runs_as_sized_for_the_session_clusters_cpus(serve_url, tiny_checkpoint):
    """serve_config.yaml unedited on a CPU-only cluster: fixed counts, CPU requests, threads and
    batch limits as deployments/sizing.py decides them for this cluster."""
    from ray.serve.context import _get_global_client

    sizing = size_graph(Cluster.current(), 0, weights_bytes(tiny_checkpoint))
    running = _get_global_client().get_serve_details()["applications"][APP]["deployments"]
    for name, options in sizing.stages.items():
        deployed = running[name]["deployment_config"]
        assert deployed["num_replicas"] == options["num_replicas"] and not deployed.get("autoscaling_config")
        assert deployed["ray_actor_options"]["num_cpus"] == options["ray_actor_options"]["num_cpus"]
        assert running[name]["replicas"] and len(running[name]["replicas"]) == options["num_replicas"]
    assert running["Ingress"]["deployment_config"]["max_ongoing_requests"] == \
        sizing.stages["Ingress"]["max_ongoing_requests"]
    for name in ("VisionEncoder", "TextEncoder"):
        for effective in ask_each_replica(APP, name, lambda encoder: encoder.effective_config()):
            assert effective["torch_threads"] == sizing.torch_threads
            assert effective["batcher_max_batch_size"] == USER_CONFIG_MODELS[name]().max_batch_size_on("cpu")


def test_a_request_larger_than_max_batch_size_is_split_and_reassembled(client, reference, serve_config):
    """Ray refuses one call bigger than a batch; the encoder cuts it into batch-sized chunks."""
    vision = serve.get_deployment_handle("VisionEncoder", APP)
    vision_batch = vision.effective_config.remote().result()["batcher_max_batch_size"]
    count = vision_batch + 7
    assert count <= serve_config["applications"][0]["args"]["limits"]["max_images_per_request"]
    raws = [RAWS[i % len(RAWS)] for i in range(count)]
    body = client.post("/v1/embeddings", json={"input": [{"image": data_uri(raw)} for raw in raws]}).json()
    np.testing.assert_allclose(embedding_vectors(body), reference.image_embeddings(raws), rtol=0, atol=ATOL)
