"""SigLIP's two towers as plain torch code: uint8 pixels or strings in, L2-normalized float32
embeddings out. The Ray deployments and the GPU benchmark both call these classes."""

from __future__ import annotations

import copy
import logging
import threading
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deployments.core import rewrites as tower_rewrites
from deployments.core.checkpoint import ImageSettings
from deployments.core.embeddings import Embeddings
from deployments.core.loading import load_tower

logger = logging.getLogger(__name__)
# Outputs that move more than this are broken, not rounded: bfloat16 kernels that add in
# another order move unit vectors by about 1e-3.
DRIFT_TOLERANCE = 1e-2


def _for_serving(core: "_EncoderCore") -> "_EncoderCore":
    """The tower's rewrites for its device, then, on a GPU, CUDA graphs for small batches."""
    core.rewrite(core.serving_rewrites(core.device))
    if core.device.type == "cuda":
        core.capture_cuda_graphs()
    return core


class _CudaGraphForward:
    """One batch size's forward pass recorded as a CUDA graph, with its fixed input and
    output buffers."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                 pool) -> None:
        self.input = example
        warmup = torch.cuda.Stream(example.device)
        warmup.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(warmup):  # cuBLAS and cuDNN choose their kernels outside the graph
            for _ in range(2):
                forward(self.input)
        torch.cuda.current_stream(example.device).wait_stream(warmup)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = forward(self.input)

    def run(self, batch: torch.Tensor) -> np.ndarray:
        self.input.copy_(batch)
        self.graph.replay()
        return self.output.cpu().numpy()


class _EncoderCore:
    tower: torch.nn.Module
    device: torch.device
    _graphs: dict[int, _CudaGraphForward]
    # The batch sizes that run as CUDA graphs by default: where a batch's time is mostly
    # kernel launches. Larger batches keep the GPU busy on their own and run eagerly.
    GRAPH_BATCH_SIZES: Sequence[int]
    # Rewrites (deployments/core/rewrites.py) served on every device; CUDA adds its own.
    SERVING_REWRITES: list[str]

    @classmethod
    def serving_rewrites(cls, device: torch.device) -> list[str]:
        """The rewrites a replica applies to this kind of tower as it loads onto `device`."""
        return (tower_rewrites.CUDA_REWRITES if device.type == "cuda" else []) + cls.SERVING_REWRITES

    def compile(self, dynamic: bool = True) -> None:
        """torch.compile the tower. dynamic=True compiles once for every batch size, so a new
        batch size never stalls a live request on a recompile; False specializes per size."""
        self.tower = torch.compile(self.tower, dynamic=dynamic)

    def rewrite(self, rewrites: Sequence[str]) -> list[str]:
        """Applies the named rewrites (deployments/core/rewrites.py) in turn, each to a copy of
        the tower that replaces it only if it computes what the tower as it was computed. The
        rewrites are exact in arithmetic but lean on transformers' module internals and on
        torch ops that a release could change: a copy that fails to build or to run, or whose
        output on a sample batch moves beyond rounding, is dropped with an error logged, and
        costs only its own rewrite. Returns the rewrites in use."""
        if not rewrites:
            return []
        sample = self._sample_input(2)
        with torch.inference_mode():
            expected = self._unit_vectors(sample)  # once: every rewrite is held to the original
        kept = []
        for name in rewrites:
            # The copy shares the tower's weights (no rewrite changes one in place), so a large
            # tower is not held twice while loading. Outside inference mode, so that the
            # weights the rewrites build stay ordinary tensors.
            shared = {id(tensor): tensor for tensor in [*self.tower.parameters(), *self.tower.buffers()]}
            original, self.tower = self.tower, copy.deepcopy(self.tower, memo=shared)
            try:
                tower_rewrites.apply(self.tower, [name])
                with torch.inference_mode():
                    drift = (self._unit_vectors(sample) - expected).abs().max().item()
                problem = f"moved the model's output by {drift:.3g}" if drift > DRIFT_TOLERANCE else None
            except (ValueError, RuntimeError, AttributeError) as error:  # e.g. an op this build lacks
                problem = f"failed ({error})"
            if problem:
                self.tower = original
                logger.error("the rewrite %s %s, so it does not fit this torch or transformers "
                             "version; serving the model without it", name, problem)
            else:
                kept.append(name)
        if kept:
            self._remember_probe()
        return kept

    @torch.inference_mode()
    def capture_cuda_graphs(self, batch_sizes: Sequence[int] | None = None) -> bool:
        """Records the forward pass once per batch size (by default GRAPH_BATCH_SIZES) as a
        CUDA graph: a batch of a recorded size then runs as one launch instead of hundreds of
        kernel launches. Other sizes run eagerly, and so does every size if recording fails
        (a driver or kernel that cannot be captured): graphs only save launch time. Returns
        whether the graphs were recorded."""
        batch_sizes = self.GRAPH_BATCH_SIZES if batch_sizes is None else batch_sizes
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        pool = torch.cuda.graph_pool_handle()
        try:
            # Largest first, so that the smaller graphs reuse its memory from the shared pool.
            for size in sorted(set(batch_sizes), reverse=True):
                self._graphs[size] = _CudaGraphForward(self._unit_vectors, self._sample_input(size), pool)
        except RuntimeError:
            logger.exception("CUDA graphs could not be recorded on %s; every batch runs eagerly",
                             self.device)
            self._graphs.clear()
            return False
        return True

    @torch.inference_mode()
    def _encode_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Unit vectors, float32 on the CPU, of a batch of the tower's inputs (on the CPU)."""
        graph = self._graphs.get(len(batch))
        if graph is None:
            return self._unit_vectors(batch.to(self.device, non_blocking=True)).cpu().numpy()
        with self._graph_lock:  # a graph's buffers hold one batch at a time
            return graph.run(batch)

    def _unit_vectors(self, batch: torch.Tensor) -> torch.Tensor:
        """The tower's pooled output, L2-normalized in float32, for inputs on its device."""
        raise NotImplementedError

    def _sample_input(self, size: int) -> torch.Tensor:
        """A fixed batch of varied inputs on the device: to compare two forms of the tower, and
        to record a graph with (whose input every replay overwrites)."""
        raise NotImplementedError

    def _init_graphs(self) -> None:
        self._graphs, self._graph_lock = {}, threading.Lock()

    def self_test(self) -> None:
        """Raises when the tower no longer computes what it computed at load: a lost or broken
        device, corrupted weights. Every layer runs, on a one-token input. That reads every
        weight once, so it costs far more than its FLOPs: 27 ms on one CPU thread for `base`,
        a twentieth of an image there. Serve's check every 10 s takes 0.3% of a core."""
        probe = self._probe()
        if not torch.isfinite(probe).all():
            raise RuntimeError(f"the model on {self.device} returns non-finite values")
        drift = (probe - self._probe_at_load).abs().max().item()
        if drift > DRIFT_TOLERANCE:
            raise RuntimeError(f"the model on {self.device} drifted by {drift:.3g} since load")

    def _remember_probe(self) -> None:
        self._probe_at_load = self._probe()

    @torch.inference_mode()
    def _probe(self) -> torch.Tensor:
        """The tower's unit output for a fixed one-token input, as float32 on the CPU."""
        return F.normalize(self.tower(**self._probe_input()).pooler_output.float(), dim=-1).cpu()

    def _probe_input(self) -> dict[str, torch.Tensor | bool]:
        raise NotImplementedError


class VisionEncoderCore(_EncoderCore):
    # H100, so400m, bfloat16: a batch of 1 took 3.0 ms as a graph and 8.7 eagerly; from 8
    # images on, both took the same time (benchmarks/gpu_encoders.py).
    GRAPH_BATCH_SIZES = range(1, 9)
    SERVING_REWRITES = ["fused_gelu"]

    def __init__(self, tower: torch.nn.Module, settings: ImageSettings):
        """`tower` is a SiglipVisionModel (or SiglipModel.vision_model), already on its device
        and in its dtype."""
        self.tower = tower
        parameter = next(tower.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.settings = settings
        config = tower.config
        self.tokens_per_image = (config.image_size // config.patch_size) ** 2
        # Normalization runs on the encoder's device, so stages exchange 4x smaller uint8 pixels.
        self._scale = torch.tensor(settings.rescale_factor, dtype=torch.float32, device=self.device)
        self._mean = torch.tensor(settings.image_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(settings.image_std, device=self.device).view(1, 3, 1, 1)
        self._init_graphs()
        self._remember_probe()

    @classmethod
    def from_pretrained(cls, model: str, device: str = "auto", dtype: str = "auto"):
        from transformers import SiglipVisionModel

        return _for_serving(cls(load_tower(SiglipVisionModel, model, device, dtype),
                                ImageSettings.from_pretrained(model)))

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) uint8 -> (n, 3, h, w) in the tower's dtype, as the processor computes it."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        batch = pixels.to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float() * self._scale
        return ((batch - self._mean) / self._std).to(self.dtype)

    def _probe_input(self) -> dict[str, torch.Tensor | bool]:
        # One patch, with the position embeddings interpolated down to it.
        patch = self.tower.config.patch_size
        return {"pixel_values": torch.zeros(1, 3, patch, patch, dtype=self.dtype, device=self.device),
                "interpolate_pos_encoding": True}

    def _sample_input(self, size: int) -> torch.Tensor:
        shape = (size, self.settings.height, self.settings.width, 3)
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(self.device)

    def _unit_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.tower(pixel_values=self.normalize(pixels)).pooler_output
        return F.normalize(pooled.float(), dim=-1)

    def encode(self, pixels: np.ndarray) -> Embeddings:
        vectors = self._encode_batch(torch.from_numpy(np.ascontiguousarray(pixels)))
        return Embeddings(vectors, np.full(len(vectors), self.tokens_per_image, dtype=np.int64))


class TextEncoderCore(_EncoderCore):
    # H100, so400m, bfloat16: graphs took a batch of 1 from 12.3 to 3.1 ms and of 8 from 9.3
    # to 4.9; at 32 both took 11.5 ms, and from 64 on graphs were slower.
    GRAPH_BATCH_SIZES = range(1, 17)
    # last_position_only spares 5.4% of base's FLOPs per text and 2.4% of so400m's.
    SERVING_REWRITES = ["last_position_only", "fused_gelu"]

    def __init__(self, tower: torch.nn.Module, tokenizer):
        """`tower` is a SiglipTextModel (or SiglipModel.text_model), already on its device and
        in its dtype; `tokenizer` is the checkpoint's own."""
        self.tower = tower
        parameter = next(tower.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.tokenizer = tokenizer
        # The checkpoint's position count, never the tokenizer's or a generation default:
        # SigLIP pools the last position, so every text must be padded to exactly this length.
        self.max_length = tower.config.max_position_embeddings
        self._init_graphs()
        self._remember_probe()

    @classmethod
    def from_pretrained(cls, model: str, device: str = "auto", dtype: str = "auto"):
        from transformers import AutoTokenizer, SiglipTextModel

        return _for_serving(cls(load_tower(SiglipTextModel, model, device, dtype),
                                AutoTokenizer.from_pretrained(model)))

    def _probe_input(self) -> dict[str, torch.Tensor | bool]:
        return {"input_ids": torch.full((1, 1), self.tokenizer.pad_token_id, device=self.device)}

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """input_ids padded to max_length, and each text's token count before padding."""
        input_ids = self.tokenizer(texts, padding="max_length", max_length=self.max_length,
                                   truncation=True, return_attention_mask=False,
                                   return_tensors="pt")["input_ids"]
        # SigLIP pads with its EOS token, so a text's length runs through its first pad token.
        is_pad = input_ids == self.tokenizer.pad_token_id
        first_pad = torch.where(is_pad.any(dim=1), is_pad.int().argmax(dim=1), self.max_length - 1)
        return input_ids, (first_pad + 1).numpy().astype(np.int64)

    def _sample_input(self, size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        shape = (size, self.max_length)
        return torch.randint(0, self.tower.config.vocab_size, shape, generator=generator).to(self.device)

    def _unit_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask, on purpose: the original text tower attends over the padding.
        return F.normalize(self.tower(input_ids=input_ids).pooler_output.float(), dim=-1)

    def encode(self, texts: list[str]) -> Embeddings:
        input_ids, tokens = self.tokenize(texts)
        return Embeddings(self._encode_batch(input_ids), tokens)
