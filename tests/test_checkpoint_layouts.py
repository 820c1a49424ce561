"""Checkpoints in both layouts transformers has saved SigLIP in: transformers 4's
preprocessor_config.json, and transformers 5's single processor_config.json with the image
processor's settings nested in it. Read alike, and served equal to the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from transformers import AutoProcessor

from deployments.core.checkpoint import MODEL_ENV_VAR, ImageSettings
from tests.support.apps import app_beside, wait_until_running
from tests.support.photos import data_uri, photos
from tests.support.reference import Reference

ATOL = 1e-5
RAWS = [raw for _, raw in photos()]
LABELS = ["cat", "rocket", "cup of coffee"]
APP, ROUTE = "siglip-current-layout", "/current-layout"


def test_the_current_layout_has_no_preprocessor_config(current_layout_checkpoint):
    files = {path.name for path in Path(current_layout_checkpoint).iterdir()}
    assert "processor_config.json" in files and "preprocessor_config.json" not in files


def test_image_settings_read_alike_from_either_layout(tiny_checkpoint, current_layout_checkpoint):
    processor = AutoProcessor.from_pretrained(current_layout_checkpoint, backend="pil").image_processor
    expected = ImageSettings(height=processor.size["height"], width=processor.size["width"],
                             resample=int(processor.resample), rescale_factor=processor.rescale_factor,
                             image_mean=tuple(processor.image_mean), image_std=tuple(processor.image_std))
    assert ImageSettings.from_pretrained(current_layout_checkpoint) == expected
    assert ImageSettings.from_pretrained(tiny_checkpoint) == expected


def test_a_checkpoint_without_image_settings_says_so(current_layout_checkpoint, tmp_path):
    folder = tmp_path / "no-image-settings"
    shutil.copytree(current_layout_checkpoint, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    del config["image_processor"]
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no image processor settings"):
        ImageSettings.from_pretrained(str(folder))


@pytest.mark.parametrize("model", ["/no/such/checkpoint", "./checkpoints/missing", "a/b/c"])
def test_a_missing_local_folder_is_named_with_the_remedy(model):
    with pytest.raises(FileNotFoundError, match=f"No checkpoint folder at {model}.*{MODEL_ENV_VAR}.*siglip-make-checkpoint"):
        ImageSettings.from_pretrained(model)


def test_an_unreachable_hub_id_is_named_with_the_remedy(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=f"google/siglip-base-patch16-224.*cannot be reached.*{MODEL_ENV_VAR}"):
        ImageSettings.from_pretrained("google/siglip-base-patch16-224")


@pytest.fixture(scope="module")
def current_layout_url(serve_url, serve_config, current_layout_checkpoint):
    def served_from_the_current_layout(app: dict) -> None:
        env_vars = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env_vars[MODEL_ENV_VAR] = current_layout_checkpoint
        for deployment in app["deployments"]:
            deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}

    with app_beside(serve_config, APP, ROUTE, served_from_the_current_layout):
        wait_until_running(APP)
        yield serve_url + ROUTE


def test_a_checkpoint_saved_by_current_transformers_is_served_exactly(current_layout_url,
                                                                      current_layout_checkpoint):
    reference = Reference(current_layout_checkpoint)
    with httpx.Client(base_url=current_layout_url, timeout=120) as client:
        models = client.get("/v1/models").json()
        assert [model["id"] for model in models["data"]] == [current_layout_checkpoint]
        items = ["a photo of a cat"] + [{"image": data_uri(raw)} for raw in RAWS]
        body = client.post("/v1/embeddings", json={"input": items}).json()
        vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors[:1], reference.text_embeddings(["a photo of a cat"]), rtol=0, atol=ATOL)
        np.testing.assert_allclose(vectors[1:], reference.image_embeddings(RAWS), rtol=0, atol=ATOL)
        body = client.post("/v1/classify", json={"input": [data_uri(raw) for raw in RAWS], "labels": LABELS}).json()
    scores = reference.scores(RAWS, [f"This is a photo of {label}." for label in LABELS])
    for image, classification in enumerate(body["data"]):
        served = {p["label"]: p["score"] for p in classification["predictions"]}
        np.testing.assert_allclose([served[label] for label in LABELS], scores[image], rtol=0, atol=ATOL)
