"""The truth every test compares against: transformers' SiglipModel with its own processor,
float32, on the CPU, fed exactly as transformers' own `load_image` would feed it."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoProcessor, SiglipModel


def load_image(raw: bytes) -> Image.Image:
    # transformers.image_utils.load_image: open, then apply the EXIF orientation.
    return ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))


class Reference:
    def __init__(self, checkpoint: str):
        self.model = SiglipModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
        # Pillow's resize, as the checkpoints were converted with. Where torchvision is
        # installed, transformers 5 picks its torchvision backend instead, whose bicubic resize
        # lands 1-2 levels off Pillow's for some pixels: past 1e-5 in the embeddings.
        self.processor = AutoProcessor.from_pretrained(checkpoint, backend="pil")

    @torch.no_grad()
    def image_embeddings(self, raws: list[bytes]) -> np.ndarray:
        inputs = self.processor(images=[load_image(raw) for raw in raws], return_tensors="pt")
        return self._unit(self.model.get_image_features(**inputs).pooler_output)

    def pixel_values(self, raws: list[bytes]) -> np.ndarray:
        inputs = self.processor(images=[load_image(raw) for raw in raws], return_tensors="pt")
        return inputs["pixel_values"].numpy()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
        return self._unit(self.model.get_text_features(**inputs).pooler_output)

    @torch.no_grad()
    def scores(self, image_raws: list[bytes], texts: list[str]) -> np.ndarray:
        """(images, texts) sigmoid probabilities from SiglipModel's own forward."""
        inputs = self.processor(text=texts, images=[load_image(raw) for raw in image_raws],
                                padding="max_length", truncation=True, return_tensors="pt")
        return torch.sigmoid(self.model(**inputs).logits_per_image).numpy()

    def pair_score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """SiglipModel's scoring applied to two sets of reference embeddings (for rerank's
        text-text and image-image pairs, which SiglipModel's forward does not pair)."""
        logits = (torch.from_numpy(left) @ torch.from_numpy(right).T) * self.model.logit_scale.exp() \
            + self.model.logit_bias
        return torch.sigmoid(logits).detach().numpy()

    @staticmethod
    def _unit(features: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.normalize(features, dim=-1).numpy()
