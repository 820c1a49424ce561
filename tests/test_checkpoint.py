"""The random-weight checkpoints have the real architectures and say loudly what they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, SiglipModel

from deployments.core.checkpoint import (RANDOM_WEIGHTS_CONFIG_KEY, ImageSettings, LogitParams,
                                         resolve_model)
from deployments.testing.random_checkpoint import RANDOM_WEIGHTS_WARNING, build_config


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


@pytest.mark.parametrize("left_out", [None, "size", "resample", "rescale_factor", "image_mean", "image_std"])
def test_image_settings_are_what_transformers_processor_reads(tiny_checkpoint, tmp_path, left_out):
    """Read from the JSON without transformers, defaults included, as the processor reads them."""
    config = json.loads((Path(tiny_checkpoint) / "preprocessor_config.json").read_text())
    config.pop(left_out, None)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert ImageSettings.from_pretrained(str(tmp_path)) == ImageSettings(
        height=processor.size["height"], width=processor.size["width"], resample=int(processor.resample),
        rescale_factor=processor.rescale_factor, image_mean=tuple(processor.image_mean),
        image_std=tuple(processor.image_std))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_logit_params_are_read_in_any_float_dtype(tmp_path, dtype):
    scale, bias = torch.tensor([4.71], dtype=dtype), torch.tensor([-16.75], dtype=dtype)
    save_file({"logit_scale": scale, "logit_bias": bias, "other": torch.zeros(3)},
              tmp_path / "model.safetensors")
    assert LogitParams.from_pretrained(str(tmp_path)) == LogitParams(scale.item(), bias.item())


def test_a_missing_checkpoint_file_is_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageSettings.from_pretrained(str(tmp_path))
    # A hub id that can be neither fetched nor found in the cache, as on a machine offline.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json of google/siglip-so400m"):
        ImageSettings.from_pretrained("google/siglip-so400m-patch14-384")
