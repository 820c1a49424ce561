"""Collections on the session's graph, stored by LanceDB in a temporary folder: search scores
equal the transformers reference (and /v1/rerank) for text→image, image→image and image→text;
filters, upserts and deletes; a bad request stores nothing; concurrent writers neither lose
nor duplicate an item; the items outlive a restart of the whole app."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deployments.core.checkpoint import LogitParams
from deployments.core.collection_rules import Model
from tests.support.apps import app_beside, assert_openai_error, wait_until_running
from tests.support.photos import data_uri, photos

PHOTOS = dict(photos())
IMAGES = ["astronaut.jpg", "coffee.png", "chelsea.webp", "hubble.tiff"]
TEXTS = ["an astronaut", "a cup of coffee", "a cat"]


def _items() -> list[dict]:
    return ([{"id": name, "image": data_uri(PHOTOS[name]), "metadata": {"kind": "photo", "n": i}}
             for i, name in enumerate(IMAGES)]
            + [{"id": f"text-{i}", "text": text, "metadata": {"kind": "caption", "n": i}}
               for i, text in enumerate(TEXTS)])


@pytest.fixture(scope="module")
def photos_collection(client):
    assert client.post("/v1/collections", json={"name": "photos"}).status_code == 201
    answer = client.post("/v1/collections/photos/items", json={"items": _items()})
    assert answer.status_code == 200, answer.text
    yield "photos"
    client.delete("/v1/collections/photos")


def _search(client, name: str, **body) -> list[dict]:
    answer = client.post(f"/v1/collections/{name}/search", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _expected(scores: dict[str, float], top_k: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda item: -item[1])[:top_k]


def _assert_ranking(found: list[dict], expected: list[tuple[str, float]]) -> None:
    assert [match["id"] for match in found] == [item_id for item_id, _ in expected]
    np.testing.assert_allclose([match["score"] for match in found], [score for _, score in expected],
                               rtol=0, atol=1e-5)


def test_search_scores_equal_the_reference_from_a_text_and_from_an_image(client, reference, photos_collection):
    raws = [PHOTOS[name] for name in IMAGES]
    image_vectors = reference.image_embeddings(raws)
    text_vectors = reference.text_embeddings(TEXTS)
    ids = IMAGES + [f"text-{i}" for i in range(len(TEXTS))]
    everything = np.concatenate([image_vectors, text_vectors])

    # text → images and texts
    query = reference.text_embeddings(["a photo of a cat"])
    scores = dict(zip(ids, reference.pair_score(query, everything)[0]))
    scores.update(zip(IMAGES, reference.scores(raws, ["a photo of a cat"])[:, 0]))  # SiglipModel's forward
    _assert_ranking(_search(client, "photos", query="a photo of a cat", top_k=7), _expected(scores, 7))

    # image → images and texts
    query = reference.image_embeddings([PHOTOS["chelsea.webp"]])
    scores = dict(zip(ids, reference.pair_score(query, everything)[0]))
    found = _search(client, "photos", query={"image": data_uri(PHOTOS["chelsea.webp"])}, top_k=3)
    _assert_ranking(found, _expected(scores, 3))
    assert found[0]["id"] == "chelsea.webp" and found[0]["metadata"] == {"kind": "photo", "n": 2}

    # exactly /v1/rerank's relevance_score for that query and those items
    documents = [{"image": data_uri(PHOTOS[name])} for name in IMAGES] + TEXTS
    ranked = client.post("/v1/rerank", json={"query": {"image": data_uri(PHOTOS["chelsea.webp"])},
                                              "documents": documents}).json()["results"]
    _assert_ranking(found, [(ids[r["index"]], r["relevance_score"]) for r in ranked][:3])


def test_filters_keep_items_whose_metadata_has_each_value(client, photos_collection):
    captions = _search(client, "photos", query="a cat", top_k=10, filter={"kind": "caption"})
    assert sorted(match["id"] for match in captions) == ["text-0", "text-1", "text-2"]
    one = _search(client, "photos", query="a cat", filter={"kind": "photo", "n": 1}, include_metadata=False)
    assert [(match["id"], match["metadata"]) for match in one] == [("coffee.png", None)]
    assert _search(client, "photos", query="a cat", filter={"kind": "it's"}) == []  # quotes stay data


def test_upsert_replaces_an_item_and_delete_removes_it(client):
    assert client.post("/v1/collections", json={"name": "edits"}).status_code == 201
    add = lambda items: client.post("/v1/collections/edits/items", json={"items": items})  # noqa: E731
    assert add([{"id": "a", "text": "a cat", "metadata": {"v": 1}}, {"id": "b", "text": "a dog"}]).status_code == 200
    assert add([{"id": "a", "image": data_uri(PHOTOS["coffee.png"]), "metadata": {"v": 2}}]).status_code == 200
    assert client.get("/v1/collections/edits").json()["count"] == 2
    found = _search(client, "edits", query={"image": data_uri(PHOTOS["coffee.png"])}, top_k=1)
    assert found[0]["id"] == "a" and found[0]["metadata"] == {"v": 2}
    assert client.delete("/v1/collections/edits/items/a").json() == {"id": "a", "object": "collection.item",
                                                                     "deleted": True}
    assert_openai_error(client.delete("/v1/collections/edits/items/a"), 404, "id")
    assert [match["id"] for match in _search(client, "edits", query="a cat")] == ["b"]
    assert client.delete("/v1/collections/edits").status_code == 200
    assert_openai_error(client.get("/v1/collections/edits"), 404, "name")


def test_the_collection_api_shapes_and_refusals(client, photos_collection):
    listed = client.get("/v1/collections").json()
    assert listed["object"] == "list"
    photos_entry = next(entry for entry in listed["data"] if entry["name"] == "photos")
    card = client.get("/v1/models").json()["data"][0]
    assert photos_entry == {"object": "collection", "name": "photos", "count": 7,
                            "dimensions": card["embedding_dimensions"], "model": card["id"], "indexed": False}
    assert_openai_error(client.post("/v1/collections", json={"name": "photos"}), 409, "name")
    for bad in ("Photos", "a b", "x" * 65, "", "../etc"):
        assert_openai_error(client.post("/v1/collections", json={"name": bad}), 400, "name")
    assert_openai_error(client.get("/v1/collections/nowhere"), 404, "name")
    assert_openai_error(client.post("/v1/collections/nowhere/search", json={"query": "a"}), 404, "name")
    assert_openai_error(client.post("/v1/collections/photos/search",
                                    json={"query": "a", "filter": {"bad key": 1}}), 400, "filter")
    assert_openai_error(client.post("/v1/collections/photos/search",
                                    json={"query": "a", "filter": {"k": [1]}}), 400)


def test_a_bad_item_fails_the_whole_request_and_stores_nothing(client, photos_collection):
    before = client.get("/v1/collections/photos").json()["count"]
    fresh = {"id": "fresh", "text": "never stored"}
    cases = [
        ([fresh, {"id": "broken", "image": data_uri(b"not an image")}], 400, "items[1]"),
        ([fresh, {"id": "fresh", "text": "again"}], 400, "items[1].id"),
        ([fresh, {"id": "big", "text": "x", "metadata": {"k": "v" * 20_000}}], 400, "items[1].metadata"),
        ([fresh, {"id": "neither"}], 400, None),
        ([fresh, {"id": "x", "text": "t" * 5000}], 400, None),
        ([fresh] * 0, 400, None),
    ]
    for items, status, param in cases:
        assert_openai_error(client.post("/v1/collections/photos/items", json={"items": items}), status, param)
    assert client.get("/v1/collections/photos").json()["count"] == before
    assert _search(client, "photos", query="never stored", top_k=10, filter={}) and \
        "fresh" not in [m["id"] for m in _search(client, "photos", query="never stored", top_k=10)]


def test_concurrent_adds_and_deletes_lose_and_duplicate_nothing(client):
    assert client.post("/v1/collections", json={"name": "busy"}).status_code == 201

    def write(i: int) -> int:
        # Every writer upserts the same 20 ids (plus its own), half of them also delete one.
        items = [{"id": f"shared-{j}", "text": f"shared {j}"} for j in range(20)]
        items.append({"id": f"own-{i}", "text": f"own {i}"})
        status = client.post("/v1/collections/busy/items", json={"items": items}).status_code
        if i % 2:
            client.delete(f"/v1/collections/busy/items/own-{i}")
        return status

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(write, range(24))) == [200] * 24
    found = _search(client, "busy", query="shared", top_k=1000)
    ids = [match["id"] for match in found]
    assert len(ids) == len(set(ids)) == 20 + 12
    assert set(ids) == {f"shared-{j}" for j in range(20)} | {f"own-{i}" for i in range(0, 24, 2)}
    client.delete("/v1/collections/busy")


def _writer(uri: str, worker: int) -> None:
    """Another process upserting the same ids into the same table, as replicas on other
    nodes would."""
    from deployments.core.collections import CollectionStore

    store = CollectionStore(uri, LogitParams(1.0, 0.0), index_threshold=10**9)
    vectors = np.eye(8, dtype=np.float32)[[j % 8 for j in range(40)]]
    for start in range(0, 40, 4):
        ids = [f"item-{j}" for j in range(start, start + 4)]
        asyncio.run(store.upsert("shared", Model("m", "fp", 8), ids, vectors[start:start + 4],
                                 ["text"] * 4, [{"worker": worker}] * 4))


def test_writers_in_several_processes_leave_one_row_per_id(tmp_path):
    from deployments.core.collections import CollectionStore

    store = CollectionStore(str(tmp_path), LogitParams(1.0, 0.0), index_threshold=10**9)
    asyncio.run(store.create("shared", Model("m", "fp", 8)))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), worker)) for worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    found = asyncio.run(store.search("shared", Model("m", "fp", 8), np.eye(8, dtype=np.float32)[0], 1000, {}, True))
    assert sorted(match.id for match in found) == sorted(f"item-{j}" for j in range(40))
    assert asyncio.run(store.describe("shared")).count == 40


def _stored_in(uri: str):
    def modify(app: dict) -> None:
        app["runtime_env"] = {"env_vars": {**app["runtime_env"]["env_vars"], "SIGLIP_COLLECTIONS_URI": uri}}
    return modify


def test_collections_outlive_a_restart_of_the_app(serve_url, serve_config, tmp_path):
    import httpx

    searches = {}
    for run in ("first", "again"):
        with app_beside(serve_config, "siglip_restart", "/restart", _stored_in(str(tmp_path))):
            wait_until_running("siglip_restart")
            with httpx.Client(base_url=serve_url + "/restart", timeout=120) as restarted:
                if run == "first":
                    assert restarted.post("/v1/collections", json={"name": "kept"}).status_code == 201
                    assert restarted.post("/v1/collections/kept/items", json={"items": _items()}).status_code == 200
                searches[run] = [_search(restarted, "kept", query="a cat", top_k=5),
                                 _search(restarted, "kept", query={"image": data_uri(PHOTOS["coffee.png"])})]
    assert len(searches["first"][0]) == 5
    for again, first in zip(searches["again"], searches["first"]):
        # The same items, metadata and order; scores to float32 rounding of a fresh encoding.
        assert [(m["id"], m["metadata"]) for m in again] == [(m["id"], m["metadata"]) for m in first]
        np.testing.assert_allclose([m["score"] for m in again], [m["score"] for m in first], rtol=0, atol=1e-6)
