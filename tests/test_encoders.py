"""The two towers equal SiglipModel, and the traps public servers fell into stay closed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from deployments.core.checkpoint import ImageSettings
from deployments.core.embeddings import Embeddings
from deployments.core.encoders import DRIFT_TOLERANCE, TextEncoderCore, VisionEncoderCore
from deployments.text_encoder import TextEncoder
from tests.support.photos import data_uri, photos, preprocess

ATOL = 1e-5
TEXTS = ["This is a photo of a cat.", "A DOG, running!!", "an astronaut",
         "Two red cars near a window; 3 people watch.", ""]


@pytest.fixture(scope="module")
def vision(tiny_checkpoint) -> VisionEncoderCore:
    return VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def text(tiny_checkpoint) -> TextEncoderCore:
    return TextEncoderCore.from_pretrained(tiny_checkpoint, device="auto", dtype="auto")


@pytest.fixture(scope="module")
def photo_pixels(tiny_checkpoint) -> tuple[list[bytes], np.ndarray]:
    """The test photographs' raw bytes, and their pixels as the preprocessor prepares them."""
    raws = [raw for _, raw in photos()]
    pixels = preprocess([data_uri(raw) for raw in raws], [f"input[{i}]" for i in range(len(raws))],
                        ImageSettings.from_pretrained(tiny_checkpoint))
    return raws, pixels


def test_image_embeddings_equal_the_reference_on_real_photographs(vision, photo_pixels, reference):
    raws, pixels = photo_pixels
    ours = vision.encode(pixels)
    np.testing.assert_allclose(ours.vectors, reference.image_embeddings(raws), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(ours.vectors, axis=1), 1, atol=1e-6)
    assert (ours.tokens == (64 // 8) ** 2).all()


def test_text_embeddings_equal_the_reference(text, reference):
    ours = text.encode(TEXTS)
    np.testing.assert_allclose(ours.vectors, reference.text_embeddings(TEXTS), rtol=0, atol=ATOL)


def test_a_text_embedding_does_not_depend_on_its_batch_companions(text):
    alone = text.encode(["a cat"]).vectors[0]
    with_short = text.encode(["a cat", "x"]).vectors[0]
    with_long = text.encode(["a very long sentence about many different things " * 3, "a cat"]).vectors[1]
    np.testing.assert_allclose(with_short, alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(with_long, alone, rtol=0, atol=1e-6)


def test_texts_are_padded_to_max_length_and_truncated_at_64(text):
    input_ids, tokens = text.tokenize(["a cat", "cat " * 200])
    assert input_ids.shape == (2, 64)
    assert tokens[1] == 64 and 2 <= tokens[0] < 10
    assert (input_ids[0, tokens[0]:] == text.tokenizer.pad_token_id).all()


def test_the_checkpoint_tokenizer_returns_no_attention_mask(tiny_checkpoint):
    """As transformers' conversion of the real checkpoints does: the original tower has none."""
    assert list(AutoTokenizer.from_pretrained(tiny_checkpoint)(["a cat"]).keys()) == ["input_ids"]


def test_the_text_tower_attends_over_padding_as_the_original_does(text, reference):
    """With a padding mask the embedding would differ; the reference (no mask) is what we match."""
    input_ids, tokens = text.tokenize(["a cat"])
    mask = (torch.arange(64) < int(tokens[0])).long()[None]
    with torch.no_grad():
        masked = reference.model.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
    masked = torch.nn.functional.normalize(masked, dim=-1).numpy()[0]
    ours = text.encode(["a cat"]).vectors[0]
    assert np.abs(ours - masked).max() > 1e-3
    np.testing.assert_allclose(ours, reference.text_embeddings(["a cat"])[0], rtol=0, atol=ATOL)


def test_bfloat16_on_the_cpu_is_rounding_away_from_the_reference(tiny_checkpoint, photo_pixels,
                                                                   reference):
    """The opt-in `dtype: bfloat16` for CPUs with AMX: off float32's 1e-5 parity, as bfloat16
    must be, but by rounding only, well inside what marks a broken model."""
    raws, pixels = photo_pixels
    vision = VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    text = TextEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    for ours, theirs in [(vision.encode(pixels), reference.image_embeddings(raws)),
                         (text.encode(TEXTS), reference.text_embeddings(TEXTS))]:
        assert ours.vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ours.vectors, axis=1), 1, atol=1e-5)
        assert ATOL < np.abs(ours.vectors - theirs).max() < DRIFT_TOLERANCE


def test_embeddings_interleave_back_into_input_order():
    images = Embeddings(np.array([[1.0, 0], [2.0, 0]], dtype=np.float32), np.array([10, 20]))
    texts = Embeddings(np.array([[0, 3.0]], dtype=np.float32), np.array([3]))
    merged = Embeddings.interleave([True, False, True], images, texts)
    np.testing.assert_array_equal(merged.vectors, [[1, 0], [0, 3], [2, 0]])
    np.testing.assert_array_equal(merged.tokens, [10, 3, 20])
    assert [len(part) for part in merged.split([2, 1])] == [2, 1]


@pytest.mark.parametrize("tower_core", ["vision", "text"])
@pytest.mark.parametrize("damage", ["nan", "drift"])
def test_self_test_fails_when_the_model_cannot_compute(tower_core, damage, tiny_checkpoint):
    # A fresh core each time: the damage below is permanent.
    core_class = VisionEncoderCore if tower_core == "vision" else TextEncoderCore
    core = core_class.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    core.self_test()  # healthy: the probe matches the one taken at load
    with torch.no_grad():
        weight = core.tower.encoder.layers[0].mlp.fc2.weight
        weight.fill_(float("nan")) if damage == "nan" else weight.mul_(5)
    with pytest.raises(RuntimeError, match="non-finite" if damage == "nan" else "drifted"):
        core.self_test()


def test_a_batch_of_a_recorded_size_replays_its_graph_and_others_run_eagerly(tiny_checkpoint):
    # CUDA graphs cannot be recorded on a CPU; a recorded one is stood in for by an object
    # with the same `run`, which is all the dispatch uses.
    core = TextEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    eager = core.encode(["a cat", "a dog", "a car"]).vectors

    class RecordedGraph:
        def __init__(self):
            self.batches = []

        def run(self, batch):
            self.batches.append(batch)
            return np.zeros((len(batch), eager.shape[1]), dtype=np.float32)

    graph = core._graphs[2] = RecordedGraph()
    assert not core.encode(["a cat", "a dog"]).vectors.any()  # the graph's output, not the tower's
    assert [tuple(b.shape) for b in graph.batches] == [(2, core.max_length)]
    np.testing.assert_array_equal(core.encode(["a cat", "a dog", "a car"]).vectors, eager)
    assert len(graph.batches) == 1


# ---- the TextEncoder stage's cache, without Ray ------------------------------------------------

@pytest.fixture
def text_stage(tiny_checkpoint):
    return TextEncoder.func_or_class(tiny_checkpoint, "cpu", "float32", None)


def _texts_encoded(stage) -> int:
    return sum(size * passes for size, passes in stage._batch_sizes.items())


def test_concurrent_requests_for_the_same_new_texts_encode_each_once(text_stage, reference):
    """A new label set sent by many clients at once: the first request encodes it, the others
    await that instead of encoding it again in the same batch."""
    texts = ["a label", "another label", "a label"]

    async def five_requests():
        return await asyncio.gather(*(text_stage.encode(texts) for _ in range(5)))

    for embeddings in asyncio.run(five_requests()):
        np.testing.assert_allclose(embeddings.vectors, reference.text_embeddings(texts), rtol=0, atol=1e-5)
    assert _texts_encoded(text_stage) == 2


def test_a_caller_that_goes_away_cancels_no_one_elses_texts(text_stage, reference):
    texts = ["a label", "another label"]

    async def first_cancelled():
        first = asyncio.create_task(text_stage.encode(texts))
        await asyncio.sleep(0)  # the first request's encoding is under way
        second = asyncio.create_task(text_stage.encode(texts))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    embeddings = asyncio.run(first_cancelled())
    np.testing.assert_allclose(embeddings.vectors, reference.text_embeddings(texts), rtol=0, atol=1e-5)
    assert _texts_encoded(text_stage) == 2 and text_stage.cache_stats()["entries"] == 2


def test_texts_no_caller_waits_for_any_more_are_not_encoded(text_stage, reference):
    """Clients that went away (a cut load test, a client timeout) leave no backlog behind."""
    texts = ["a label", "another label"]
    text_stage.reconfigure({"batch_wait_timeout_s": 0.2})  # the batch waits for company

    async def leave_then_ask_again():
        callers = [asyncio.create_task(text_stage.encode(texts)) for _ in range(2)]
        await asyncio.sleep(0.05)
        for caller in callers:
            caller.cancel()
        await asyncio.sleep(0.3)
        encoded_for_no_one = _texts_encoded(text_stage)
        return encoded_for_no_one, await text_stage.encode(texts)

    encoded_for_no_one, embeddings = asyncio.run(leave_then_ask_again())
    assert encoded_for_no_one == 0
    np.testing.assert_allclose(embeddings.vectors, reference.text_embeddings(texts), rtol=0, atol=1e-5)
    assert _texts_encoded(text_stage) == 2
