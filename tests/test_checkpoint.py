"""The random-weight checkpoints have the real architectures and say loudly what they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import SiglipModel

from deployments.core.checkpoint import resolve_model
from deployments.core.random_checkpoint import (RANDOM_WEIGHTS_CONFIG_KEY, RANDOM_WEIGHTS_WARNING,
                                                build_config)


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset,vision,text,image_size,patch", [
    ("so400m", 428_225_600, 449_734_896, 384, 14),  # google/siglip-so400m-patch14-384
    ("base", 92_884_224, 110_271_744, 224, 16),     # google/siglip-base-patch16-224
])
def test_presets_have_the_real_shapes(preset, vision, text, image_size, patch):
    config = build_config(preset, tokenizer_vocab_size=400)
    with torch.device("meta"):  # shapes only, no memory
        model = SiglipModel(config)
    assert (_parameters(model.vision_model), _parameters(model.text_model)) == (vision, text)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (image_size, patch)
    assert config.text_config.max_position_embeddings == 64
    assert config.text_config.vocab_size == 32000


def test_checkpoint_is_marked_as_random(tiny_checkpoint):
    folder = Path(tiny_checkpoint)
    config = json.loads((folder / "config.json").read_text())
    assert config[RANDOM_WEIGHTS_CONFIG_KEY] == RANDOM_WEIGHTS_WARNING
    assert "meaningless" in (folder / "README.md").read_text()
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["resample"] == 3 and processor["image_mean"] == [0.5, 0.5, 0.5]


def test_siglip_model_env_var_overrides_the_configured_model(monkeypatch):
    monkeypatch.delenv("SIGLIP_MODEL", raising=False)
    assert resolve_model("google/siglip-so400m-patch14-384") == "google/siglip-so400m-patch14-384"
    monkeypatch.setenv("SIGLIP_MODEL", "/models/mine")
    assert resolve_model("google/siglip-so400m-patch14-384") == "/models/mine"
