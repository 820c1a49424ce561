"""Rewrites of a SigLIP tower that change how it runs, not what it computes.

Each one keeps the pooled output the same in exact arithmetic; only the order of floating-point
sums may change, so results move by rounding alone (at most 2e-7 in float32 on an H100). None
changes a weight in place: each builds new modules, so a rewritten copy may share its weights
with the tower it was copied from.

On every device:

- last_position_only (text tower): SigLIP's text pooling reads the last position of the last
  layer and nothing else, so that layer runs its MLP for that position alone. Every position
  still serves as a key and a value to its attention.
- fused_gelu: fc1's bias and GELU's tanh approximation, the one SigLIP uses, run in the
  GEMM's epilogue: cuBLAS's on CUDA, a oneDNN post-op on a CPU. That saves a read and a write
  of the widest activation per layer, and on a CPU it replaces torch's tanh-GELU kernel,
  which took 4-10x as long as its erf GELU (torch 2.13, one thread, base's MLP shapes).

On CUDA, for GPU tensor cores:

- pad_mlp: so400m's MLP is 4304 wide, not a multiple of 128. Zero rows of fc1 give
  GELU(0) = 0, which meets zero columns of fc2. It must come before fused_gelu.
- fused_qkv: the query, key and value projections run as one GEMM three times as wide.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

TANH_GELU = "gelu_pytorch_tanh"


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.requires_grad_(False)


def _is_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("fc1", "fc2", "activation_fn"))


def _is_self_attention(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj", "out_proj",
                                                   "head_dim", "num_heads", "scale"))


def pad_mlps(tower: nn.Module, multiple: int = 128) -> None:
    """Zero-pads every MLP's hidden width up to a multiple of `multiple`."""
    for mlp in [m for m in tower.modules() if _is_mlp(m)]:
        width = mlp.fc1.out_features
        padded = _round_up(width, multiple)
        if padded == width:
            continue
        probe = mlp.activation_fn(torch.zeros(1, device=mlp.fc1.weight.device))
        if probe.item() != 0.0:
            raise ValueError(f"padding needs an activation with f(0) = 0, not {mlp.activation_fn}")
        extra = padded - width
        fc1_weight = nn.functional.pad(mlp.fc1.weight, (0, 0, 0, extra))
        fc1_bias = nn.functional.pad(mlp.fc1.bias, (0, extra))
        fc2_weight = nn.functional.pad(mlp.fc2.weight, (0, extra))
        mlp.fc1, mlp.fc2 = _linear(fc1_weight, fc1_bias), _linear(fc2_weight, mlp.fc2.bias)


class FusedGeluMLP(nn.Module):
    """fc1 -> tanh-GELU -> fc2, with fc1's bias and the GELU in the GEMM's epilogue."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        if rows.is_cuda:  # on a CPU this op's GELU is the exact (erf) one
            activated = torch._addmm_activation(self.fc1.bias, rows, self.fc1.weight.t(), use_gelu=True)
        else:
            activated = torch.ops.mkldnn._linear_pointwise(rows, self.fc1.weight, self.fc1.bias,
                                                           "gelu", [], "tanh")
        return self.fc2(activated).view(*hidden_states.shape[:-1], -1)


def _swap_modules(tower: nn.Module, matches: Callable[[nn.Module], bool],
                  replacement: Callable[[nn.Module], nn.Module]) -> None:
    for parent in list(tower.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, replacement(child))


def fuse_mlp_gelu(tower: nn.Module) -> None:
    """Swaps every tanh-GELU MLP for FusedGeluMLP: on CUDA, or on a CPU with oneDNN."""
    device = next(tower.parameters()).device.type
    if device not in ("cuda", "cpu") or (device == "cpu" and not torch.backends.mkldnn.is_available()):
        raise ValueError(f"no fused tanh-GELU GEMM on {device} in this torch build")
    _swap_modules(tower, lambda m: _is_mlp(m) and m.config.hidden_act == TANH_GELU,
                  lambda mlp: FusedGeluMLP(mlp.fc1, mlp.fc2))


class FusedQKVAttention(nn.Module):
    """Self-attention with the query, key and value projections in one GEMM."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = attention.num_heads, attention.head_dim, attention.scale
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        self.qkv_proj = _linear(torch.cat([p.weight for p in projections]),
                                torch.cat([p.bias for p in projections]))
        self.out_proj = attention.out_proj

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                              scale=self.scale)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1)), None


def fuse_qkv(tower: nn.Module) -> None:
    """Swaps every self-attention for FusedQKVAttention."""
    _swap_modules(tower, _is_self_attention, FusedQKVAttention)


class LastPositionLayer(nn.Module):
    """An encoder layer whose output is the last position alone, as (batch, 1, width)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        layer = self.layer
        attended, _ = layer.self_attn(layer.layer_norm1(hidden_states), attention_mask, **kwargs)
        last = hidden_states[:, -1:] + attended[:, -1:]
        return last + layer.mlp(layer.layer_norm2(last))


def last_position_only(tower: nn.Module) -> None:
    """Runs a text tower's last layer for the position it pools. The tower's last_hidden_state
    then holds that position alone; its pooler_output is unchanged."""
    if tower.config.model_type != "siglip_text_model":
        raise ValueError(f"only a text tower pools its last position, not a {tower.config.model_type}")
    tower.encoder.layers[-1] = LastPositionLayer(tower.encoder.layers[-1])


REWRITES = {"last_position_only": last_position_only, "pad_mlp": pad_mlps,
            "fused_gelu": fuse_mlp_gelu, "fused_qkv": fuse_qkv}
# What a tower on a CUDA device gets before the rewrites of every device. On an H100 (so400m,
# bfloat16) these two and fused_gelu took the vision encoder from 605-634 to 650-668 images/s
# at batches of 32-256 (benchmarks/gpu_encoders.py).
CUDA_REWRITES = ["pad_mlp", "fused_qkv"]


def apply(tower: nn.Module, rewrites: list[str]) -> None:
    """Applies the named rewrites in order (names from REWRITES)."""
    for name in rewrites:
        REWRITES[name](tower)
