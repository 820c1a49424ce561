"""The rewrites of a tower change how it runs, never what it computes.

They are checked here in float32 on the CPU, the GPU's as well. The fused GELU runs another
kernel on CUDA (cuBLAS's epilogue, not oneDNN's); that one was checked on an H100: the GPU
section of docs/performance.md gives the figures.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import SiglipModel

from deployments.core import rewrites
from deployments.core.encoders import TextEncoderCore, VisionEncoderCore

# Everything a replica on a GPU applies, in its order.
GPU_VISION_REWRITES = VisionEncoderCore.serving_rewrites(torch.device("cuda"))
GPU_TEXT_REWRITES = TextEncoderCore.serving_rewrites(torch.device("cuda"))


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> SiglipModel:
    return SiglipModel.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()


def _rewritten(tower: torch.nn.Module, chosen: list[str]) -> torch.nn.Module:
    tower = copy.deepcopy(tower)
    rewrites.apply(tower, chosen)
    return tower


@pytest.mark.parametrize("chosen", [["pad_mlp"], ["fused_qkv"], ["fused_gelu"], GPU_VISION_REWRITES])
def test_rewritten_towers_compute_what_the_checkpoint_computes(model, chosen):
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    input_ids = torch.randint(0, model.config.text_config.vocab_size, (4, 64))
    with torch.inference_mode():
        for tower, inputs in ((model.vision_model, {"pixel_values": pixels}),
                              (model.text_model, {"input_ids": input_ids})):
            expected = tower(**inputs).pooler_output
            got = _rewritten(tower, chosen)(**inputs).pooler_output
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_text_tower_computes_its_pooled_position_alone_in_its_last_layer(model):
    input_ids = torch.randint(0, model.config.text_config.vocab_size, (4, 64))
    input_ids[:, 10:] = 1  # padding, which the last position attends to like any other token
    with torch.inference_mode():
        expected = model.text_model(input_ids=input_ids).pooler_output
        for chosen in (["last_position_only"], GPU_TEXT_REWRITES):
            rewritten = _rewritten(model.text_model, chosen)(input_ids=input_ids)
            torch.testing.assert_close(rewritten.pooler_output, expected, rtol=0, atol=1e-6)
            assert rewritten.last_hidden_state.shape[1] == 1


def test_only_a_text_tower_may_drop_positions(model):
    # The vision tower's pooling head attends over every position.
    with pytest.raises(ValueError, match="only a text tower"):
        rewrites.last_position_only(copy.deepcopy(model.vision_model))


def test_the_rewrites_reach_every_layer_and_the_pooling_head(model):
    tower = _rewritten(model.vision_model, GPU_VISION_REWRITES)
    layers = model.config.vision_config.num_hidden_layers
    assert len([m for m in tower.modules() if isinstance(m, rewrites.FusedQKVAttention)]) == layers
    assert len([m for m in tower.modules() if isinstance(m, rewrites.FusedGeluMLP)]) == layers + 1
    # tiny's MLPs are 64 wide: every one, the pooling head's too, is padded to 128.
    widths = {m.fc1.out_features for m in tower.modules() if hasattr(m, "fc1")}
    assert widths == {128}


def test_padding_refuses_an_activation_that_is_not_zero_at_zero(model):
    tower = copy.deepcopy(model.vision_model)
    tower.encoder.layers[0].mlp.activation_fn = torch.nn.Sigmoid()
    with pytest.raises(ValueError, match="f\\(0\\) = 0"):
        rewrites.pad_mlps(tower)


@pytest.mark.parametrize("core_class", [VisionEncoderCore, TextEncoderCore])
def test_an_encoder_checks_its_rewrites_against_the_tower_they_replace(core_class, tiny_checkpoint,
                                                                        monkeypatch):
    core = core_class.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    assert core.rewrite(["fused_qkv"])
    assert any(isinstance(m, rewrites.FusedQKVAttention) for m in core.tower.modules())
    core.self_test()  # the probe was taken again, from the rewritten tower

    def wrong_scale(tower):  # what a transformers release that renamed `scale` could cause
        for module in tower.modules():
            if isinstance(module, rewrites.FusedQKVAttention):
                module.scale *= 4

    monkeypatch.setitem(rewrites.REWRITES, "wrong_scale", wrong_scale)
    sample = (np.full((1, 64, 64, 3), 128, dtype=np.uint8) if core_class is VisionEncoderCore
              else ["a cat"])
    served, tower = core.encode(sample).vectors, core.tower
    assert not core.rewrite(["wrong_scale"])
    assert core.tower is tower  # the copy that failed the check is dropped
    np.testing.assert_array_equal(core.encode(sample).vectors, served)


def test_a_rewritten_copy_shares_the_weights_it_does_not_rebuild(tiny_checkpoint):
    # A large tower is not held twice while a replica loads.
    core = VisionEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    loaded = {id(p) for p in core.tower.parameters()}
    assert core.rewrite(["fused_qkv"])
    built = {id(p) for m in core.tower.modules() if isinstance(m, rewrites.FusedQKVAttention)
             for p in m.qkv_proj.parameters()}
    kept = {id(p) for p in core.tower.parameters()} - built
    assert built and kept and kept <= loaded


def test_a_rewrite_that_fails_costs_only_itself(tiny_checkpoint, monkeypatch):
    def missing_op(tower):  # what a torch build without oneDNN would give
        raise RuntimeError("no such operator")

    monkeypatch.setitem(rewrites.REWRITES, "fused_gelu", missing_op)
    core = TextEncoderCore.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    assert not any(isinstance(m, rewrites.FusedGeluMLP) for m in core.tower.modules())
    assert any(isinstance(m, rewrites.LastPositionLayer) for m in core.tower.modules())
    assert core.encode(["a cat"]).vectors.shape[0] == 1


@pytest.mark.parametrize("core_class", [VisionEncoderCore, TextEncoderCore])
def test_a_cpu_encoder_serves_without_tensor_core_rewrites_or_graphs(core_class, tiny_checkpoint):
    core = core_class.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    modules = list(core.tower.modules())
    assert not any(isinstance(m, rewrites.FusedQKVAttention) for m in modules)
    assert any(isinstance(m, rewrites.FusedGeluMLP) for m in modules)
    last_position_layers = [m for m in modules if isinstance(m, rewrites.LastPositionLayer)]
    assert len(last_position_layers) == (core_class is TextEncoderCore)
    assert core._graphs == {}
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        core.capture_cuda_graphs()
    sample = (np.zeros((2, 64, 64, 3), dtype=np.uint8) if core_class is VisionEncoderCore
              else ["a cat", "a dog"])
    assert core.encode(sample).vectors.shape[0] == 2

