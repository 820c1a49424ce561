"""The request shapes real clients send, on the session's graph, against the transformers
reference: chat content parts, `dimensions`, token IDs (refused with the fix), prompt ensembles,
and the model card."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pytest

from deployments.testing.local_cluster import ask_each_replica
from tests.support.apps import embedding_vectors, assert_openai_error, text_encoder_cache_stats
from tests.support.photos import data_uri, distinct, photos

ATOL = 1e-5
APP = "siglip"
RAWS = [raw for _, raw in photos()[:3]]
URIS = [data_uri(raw) for raw in RAWS]


def test_content_parts_give_the_same_embeddings_as_items(client, reference):
    parts = [{"type": "text", "text": "a cat on a mat"},
             {"type": "image_url", "image_url": {"url": URIS[0], "detail": "auto"}},
             {"type": "image_url", "image_url": URIS[1]}]
    body = client.post("/v1/embeddings", json={"input": parts})
    assert body.status_code == 200, body.text
    vectors = embedding_vectors(body.json())
    np.testing.assert_allclose(vectors[0], reference.text_embeddings(["a cat on a mat"])[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(vectors[1:], reference.image_embeddings(RAWS[:2]), rtol=0, atol=ATOL)


def test_content_parts_in_classify_and_rerank(client, reference):
    labels = ["cat", "rocket"]
    classify = client.post("/v1/classify", json={
        "input": [{"type": "image_url", "image_url": {"url": URIS[2]}}], "labels": labels}).json()
    expected = reference.scores(RAWS[2:], [f"This is a photo of {label}." for label in labels])[0]
    got = {p["label"]: p["score"] for p in classify["data"][0]["predictions"]}
    np.testing.assert_allclose([got[label] for label in labels], expected, rtol=0, atol=ATOL)

    rerank = client.post("/v1/rerank", json={
        "query": {"type": "text", "text": "a cat"},
        "documents": [{"type": "image_url", "image_url": URIS[0]}, {"type": "text", "text": "a dog"}],
        "return_documents": True}).json()
    query = reference.text_embeddings(["a cat"])
    expected = {0: reference.pair_score(query, reference.image_embeddings(RAWS[:1]))[0, 0],
                1: reference.pair_score(query, reference.text_embeddings(["a dog"]))[0, 0]}
    for result in rerank["results"]:
        np.testing.assert_allclose(result["relevance_score"], expected[result["index"]], rtol=0, atol=ATOL)
    assert {result["index"]: result["document"] for result in rerank["results"]} == {
        0: {"image": URIS[0]}, 1: {"text": "a dog"}}


def test_a_malformed_part_gets_a_400_naming_it(client):
    error = assert_openai_error(client.post("/v1/embeddings", json={"input": [
        "fine", {"type": "image_url", "image_url": {"link": URIS[0]}}]}), 400)
    assert error["param"].startswith("input[1]"), error


def test_dimensions_is_accepted_only_at_the_models_size(client, reference):
    size = client.get("/v1/models").json()["data"][0]["embedding_dimensions"]
    body = client.post("/v1/embeddings", json={"input": ["a cat"], "dimensions": size})
    assert body.status_code == 200
    np.testing.assert_allclose(embedding_vectors(body.json())[0], reference.text_embeddings(["a cat"])[0], rtol=0, atol=ATOL)
    error = assert_openai_error(client.post("/v1/embeddings", json={"input": ["a cat"], "dimensions": size // 2}),
                                400, param="dimensions")
    assert "not trained for shortened embeddings" in error["message"] and str(size) in error["message"]


def test_the_openai_client_sends_dimensions(serve_url, tiny_checkpoint, client):
    import openai

    size = client.get("/v1/models").json()["data"][0]["embedding_dimensions"]
    sdk = openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    assert len(sdk.embeddings.create(model=tiny_checkpoint, input="a cat", dimensions=size).data[0].embedding) == size
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        sdk.embeddings.create(model=tiny_checkpoint, input="a cat", dimensions=size - 1)


@pytest.mark.parametrize("token_ids", [[[1049, 5679, 374]], [1049, 5679, 374], [[1049], [5679, 374]]])
def test_token_ids_get_a_400_that_names_langchains_setting(client, token_ids):
    """What LangChain's OpenAIEmbeddings sends by default: OpenAI-tokenizer IDs per text."""
    error = assert_openai_error(client.post("/v1/embeddings", json={"input": token_ids}),
                                400, param="input")
    assert "token IDs" in error["message"] and "check_embedding_ctx_length=False" in error["message"]


def test_a_prompt_ensemble_scores_against_the_mean_of_its_templates(client, reference):
    labels = ["cat", "rocket", "cup of coffee"]
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "a drawing of the {}."]
    request = {"input": URIS, "labels": labels, "hypothesis_template": templates}
    first = client.post("/v1/classify", json=request)
    assert first.status_code == 200, first.text

    prompts = reference.text_embeddings([t.format(label) for label in labels for t in templates])
    means = prompts.reshape(len(labels), len(templates), -1).mean(axis=1)
    label_vectors = means / np.linalg.norm(means, axis=1, keepdims=True)
    expected = reference.pair_score(reference.image_embeddings(RAWS), label_vectors)
    for row, item in zip(expected, first.json()["data"]):
        got = {p["label"]: p["score"] for p in item["predictions"]}
        np.testing.assert_allclose([got[label] for label in labels], row, rtol=0, atol=ATOL)

    # Cached per filled-in template: the same label set again costs no text-encoder call.
    before = text_encoder_cache_stats(APP)
    again = client.post("/v1/classify", json=request).json()
    assert text_encoder_cache_stats(APP) == before
    assert again["data"] == first.json()["data"]


def test_a_template_without_braces_gets_a_400_naming_it(client):
    response = client.post("/v1/classify", json={"input": URIS[:1], "labels": ["cat"],
                                                 "hypothesis_template": ["a {}", "no slot"]})
    assert assert_openai_error(response, 400)["param"] == "hypothesis_template[1]"


def test_the_model_card_says_what_the_embedding_space_is(client, tiny_checkpoint, reference):
    card = client.get("/v1/models").json()["data"][0]
    assert client.get(f"/v1/models/{tiny_checkpoint}").json() == card
    config = reference.model.config
    assert card["embedding_dimensions"] == config.vision_config.hidden_size == len(
        client.post("/v1/embeddings", json={"input": "x"}).json()["data"][0]["embedding"])
    assert (card["image_size"], card["patch_size"]) == (config.vision_config.image_size,
                                                        config.vision_config.patch_size)
    assert card["max_text_tokens"] == 64
    assert card["logit_scale"] == pytest.approx(reference.model.logit_scale.item(), abs=1e-6)
    assert card["logit_bias"] == pytest.approx(reference.model.logit_bias.item(), abs=1e-6)
    assert (card["dtype"], card["device"]) == ("float32", "cpu")
    # Recomputed here from the file itself.
    weights = hashlib.sha256(Path(tiny_checkpoint, "model.safetensors").read_bytes()).hexdigest()
    assert card["fingerprint"] == "sha256:" + hashlib.sha256(f"model.safetensors:{weights}\n".encode()).hexdigest()

    error = assert_openai_error(client.get("/v1/models/another-model"), 404)
    assert error["code"] == "model_not_found"


def test_forms_as_curl_sends_them_give_the_references_numbers(client, reference):
    """`curl -F image=@cat.jpg -F labels=cat -F labels=rocket .../v1/classify`, and the same for
    embeddings and rerank."""
    labels = ["cat", "rocket"]
    files = [("image", (f"photo{i}.jpg", raw, "image/jpeg")) for i, raw in enumerate(RAWS[:2])]
    classify = client.post("/v1/classify", data={"labels": labels}, files=files)
    assert classify.status_code == 200, classify.text
    expected = reference.scores(RAWS[:2], [f"This is a photo of {label}." for label in labels])
    for row, item in zip(expected, classify.json()["data"]):
        got = {p["label"]: p["score"] for p in item["predictions"]}
        np.testing.assert_allclose([got[label] for label in labels], row, rtol=0, atol=ATOL)

    parts = [("input", (None, "a cat")), ("image", ("p.jpg", RAWS[0], "image/jpeg"))]
    embeddings = client.post("/v1/embeddings", files=parts)
    vectors = embedding_vectors(embeddings.json())
    np.testing.assert_allclose(vectors[0], reference.text_embeddings(["a cat"])[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(vectors[1], reference.image_embeddings(RAWS[:1])[0], rtol=0, atol=ATOL)

    rerank = client.post("/v1/rerank", files=[("query", ("q.jpg", RAWS[1], "image/jpeg")),
                                              ("documents", (None, "a rocket"))]).json()
    expected = reference.pair_score(reference.image_embeddings(RAWS[1:2]), reference.text_embeddings(["a rocket"]))
    np.testing.assert_allclose(rerank["results"][0]["relevance_score"], expected[0, 0], rtol=0, atol=ATOL)


def test_a_form_with_an_undecodable_file_names_it(client):
    response = client.post("/v1/classify", data={"labels": ["cat"]},
                           files=[("image", ("a.jpg", RAWS[0], "image/jpeg")), ("image", ("b.jpg", b"junk", "image/jpeg"))])
    assert assert_openai_error(response, 400)["param"] == "input[1]"


def test_langchain_openai_embeds_with_the_documented_setting(serve_url, tiny_checkpoint, reference):
    """The real langchain-openai client. Without check_embedding_ctx_length=False it would first
    fetch tiktoken's encoding over the network, then send token IDs, which the test above
    answers with a 400 naming this setting."""
    from langchain_openai import OpenAIEmbeddings

    embedder = OpenAIEmbeddings(model=tiny_checkpoint, base_url=f"{serve_url}/v1", api_key="unused",
                                check_embedding_ctx_length=False, max_retries=0)
    texts = ["a cat on a mat", "a rocket on its launch pad"]
    np.testing.assert_allclose(np.array(embedder.embed_documents(texts), dtype=np.float32),
                               reference.text_embeddings(texts), rtol=0, atol=ATOL)
    np.testing.assert_allclose(embedder.embed_query(texts[0]), reference.text_embeddings(texts[:1])[0],
                               rtol=0, atol=ATOL)


def _vision_items_encoded() -> int:
    passes = ask_each_replica(APP, "VisionEncoder", lambda encoder: encoder.batch_stats()["forward_passes"])
    return sum(size * count for replica in passes for size, count in replica.items())


def test_an_image_sent_again_inline_costs_no_encode(client, reference):
    raw = distinct(RAWS[0], 4242)  # bytes no other test sends
    for form in (data_uri(raw, "image/jpeg"), base64.b64encode(raw).decode()):  # the same bytes
        before = _vision_items_encoded()
        body = client.post("/v1/embeddings", json={"input": [{"image": form}, "a text"]}).json()
        np.testing.assert_allclose(embedding_vectors(body)[0], reference.image_embeddings([raw])[0], rtol=0, atol=ATOL)
        encoded = _vision_items_encoded() - before
    assert encoded == 0  # the second form came from the first one's cache entry

    # Other bytes, the same pixels: encoded again, never mistaken for the cached one.
    before = _vision_items_encoded()
    client.post("/v1/embeddings", json={"input": [{"image": data_uri(distinct(RAWS[0], 4243))}]}).raise_for_status()
    assert _vision_items_encoded() - before == 1
