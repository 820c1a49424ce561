"""The GPU rewrites of a tower change how it runs, never what it computes.

They are checked here in float32 on the CPU. The one that only exists on CUDA (the fused GELU)
was checked on an H100: README's "One GPU, encoders alone" gives the figures.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import SiglipModel

from deployments.core import tensor_cores
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore

CPU_REWRITES = [name for name in tensor_cores.CUDA_REWRITES if name != "fused_gelu"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> SiglipModel:
    return SiglipModel.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()


def _rewritten(tower: torch.nn.Module, rewrites: list[str]) -> torch.nn.Module:
    tower = copy.deepcopy(tower)
    tensor_cores.apply(tower, rewrites)
    return tower


@pytest.mark.parametrize("rewrites", [["pad_mlp"], ["fused_qkv"], CPU_REWRITES])
def test_rewritten_towers_compute_what_the_checkpoint_computes(model, rewrites):
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    input_ids = torch.randint(0, model.config.text_config.vocab_size, (4, 64))
    with torch.inference_mode():
        for tower, inputs in ((model.vision_model, {"pixel_values": pixels}),
                              (model.text_model, {"input_ids": input_ids})):
            expected = tower(**inputs).pooler_output
            got = _rewritten(tower, rewrites)(**inputs).pooler_output
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_rewrites_reach_every_layer_and_the_pooling_head(model):
    tower = _rewritten(model.vision_model, CPU_REWRITES)
    fused = [m for m in tower.modules() if isinstance(m, tensor_cores.FusedQKVAttention)]
    assert len(fused) == model.config.vision_config.num_hidden_layers
    # tiny's MLPs are 64 wide: every one, the pooling head's too, is padded to 128.
    widths = {m.fc1.out_features for m in tower.modules() if hasattr(m, "fc1")}
    assert widths == {128}


def test_padding_refuses_an_activation_that_is_not_zero_at_zero(model):
    tower = copy.deepcopy(model.vision_model)
    tower.encoder.layers[0].mlp.activation_fn = torch.nn.Sigmoid()
    with pytest.raises(ValueError, match="f\\(0\\) = 0"):
        tensor_cores.pad_mlps(tower)


def test_the_fused_gelu_refuses_a_cpu_tower_where_its_gelu_would_be_exact(model):
    # On a CPU torch's fused op computes the erf GELU, not SigLIP's tanh approximation.
    with pytest.raises(ValueError, match="CUDA"):
        tensor_cores.fuse_mlp_gelu(copy.deepcopy(model.vision_model))


@pytest.mark.parametrize("core_class", [VisionEncoderCore, TextEncoderCore])
def test_an_encoder_checks_its_rewrites_against_the_tower_they_replace(core_class, tiny_checkpoint,
                                                                        monkeypatch):
    core = core_class.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    assert core.rewrite(CPU_REWRITES)
    assert any(isinstance(m, tensor_cores.FusedQKVAttention) for m in core.tower.modules())
    core.self_test()  # the probe was taken again, from the rewritten tower

    def wrong_scale(tower):  # what a transformers release that renamed `scale` could cause
        for module in tower.modules():
            if isinstance(module, tensor_cores.FusedQKVAttention):
                module.scale *= 4

    monkeypatch.setitem(tensor_cores.REWRITES, "wrong_scale", wrong_scale)
    sample = (np.full((1, 64, 64, 3), 128, dtype=np.uint8) if core_class is VisionEncoderCore
              else ["a cat"])
    served, tower = core.encode(sample).vectors, core.tower
    assert not core.rewrite(["wrong_scale"])
    assert core.tower is tower  # the copy that failed the check is dropped
    np.testing.assert_array_equal(core.encode(sample).vectors, served)


@pytest.mark.parametrize("core_class", [VisionEncoderCore, TextEncoderCore])
def test_a_cpu_encoder_serves_the_checkpoint_unchanged_and_without_graphs(core_class, tiny_checkpoint):
    core = core_class.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    assert not any(isinstance(m, (tensor_cores.FusedQKVAttention, tensor_cores.FusedGeluMLP))
                   for m in core.tower.modules())
    assert core._graphs == {}
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        core.capture_cuda_graphs()
    sample = (np.zeros((2, 64, 64, 3), dtype=np.uint8) if core_class is VisionEncoderCore
              else ["a cat", "a dog"])
    assert core.encode(sample).vectors.shape[0] == 2

