"""Request and response bodies of the public HTTP API, mirroring the specs they follow:
OpenAI (models, embeddings, errors), Jina (classify) and Cohere/Jina (rerank)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- inputs --------------------------------------------------------------------------------

class TextItem(_Request):
    text: str


class ImageItem(_Request):
    image: str = Field(description="An http(s) URL, a data URI (data:image/png;base64,...) or "
                       "raw base64 bytes of a JPEG, PNG, WebP, GIF, BMP or TIFF image.")


# A bare string is text where texts are expected (embeddings, rerank) and an image in classify.
Item = Union[str, TextItem, ImageItem]


# ---- errors (OpenAI) -----------------------------------------------------------------------

class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---- models (OpenAI) -----------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "siglip-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    """Text inputs count their tokens before padding; images count their patches."""

    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, tokens: int) -> "Usage":
        return cls(prompt_tokens=tokens, total_tokens=tokens)


# ---- embeddings (OpenAI) -------------------------------------------------------------------

class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | Annotated[list[Item], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# ---- classify (Jina) -----------------------------------------------------------------------

DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."


class ClassifyRequest(_Request):
    model: str | None = None
    input: Annotated[list[Union[str, ImageItem]], Field(min_length=1)]
    labels: Annotated[list[str], Field(min_length=1)]
    hypothesis_template: str = Field(DEFAULT_HYPOTHESIS_TEMPLATE, pattern=r"\{\}",
                                     description="Each label replaces the `{}` in it.")
    top_k: int | None = Field(None, ge=1, description="Predictions per image; all by default.")


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    prediction: str
    score: float
    predictions: list[LabelScore] = Field(description="Highest score first. Each score is an "
                                          "independent sigmoid probability; they need not sum to 1.")


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


# ---- rerank (Cohere/Jina) ------------------------------------------------------------------

class RerankRequest(_Request):
    model: str | None = None
    query: Item
    documents: Annotated[list[Item], Field(min_length=1)]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: TextItem | ImageItem | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: Usage
