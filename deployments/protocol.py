"""Request and response bodies of the public HTTP API, mirroring the specs they follow:
OpenAI (models, embeddings, errors, chat content parts), Jina (classify) and Cohere/Jina
(rerank)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt,
                      StrictStr, field_validator, model_validator)
from pydantic_core import PydanticCustomError


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- inputs --------------------------------------------------------------------------------

class TextItem(_Request):
    text: str


class ImageItem(_Request):
    image: str = Field(description="An http(s) URL, a data URI (data:image/png;base64,...) or "
                       "raw base64 bytes of a JPEG, PNG, WebP, GIF, BMP or TIFF image.")


class TextPart(_Request):
    """A text as a content part of OpenAI's chat API (also vLLM, Cohere v4, Voyage)."""

    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str = Field(description="An http(s) URL or a data URI.")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Accepted as OpenAI clients send it; SigLIP always sees its own "
        "input size.")


class ImageUrlPart(_Request):
    """An image as a content part of OpenAI's chat API: `image_url` as an object or a bare URL."""

    type: Literal["image_url"]
    image_url: ImageUrl | str


def _plain_item(item):
    """Content parts become the items they carry, so that nothing past parsing sees parts."""
    if isinstance(item, TextPart):
        return TextItem(text=item.text)
    if isinstance(item, ImageUrlPart):
        url = item.image_url if isinstance(item.image_url, str) else item.image_url.url
        return ImageItem(image=url)
    return item


# A bare string is text where texts are expected (embeddings, rerank) and an image in classify.
Item = Annotated[Union[str, TextItem, ImageItem, TextPart, ImageUrlPart], AfterValidator(_plain_item)]
ImageInput = Annotated[Union[str, ImageItem, ImageUrlPart], AfterValidator(_plain_item)]


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
    """OpenAI's model object, with what a client needs to use the embedding space."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "siglip-serve"
    embedding_dimensions: int = Field(description="Length of every embedding, image or text.")
    image_size: int = Field(description="Images are resized to this many pixels square.")
    patch_size: int
    max_text_tokens: int = Field(description="Every text is padded or cut to this many tokens.")
    logit_scale: float = Field(description="As served: score = sigmoid(cos · exp(logit_scale) + "
                               "logit_bias), each score an independent probability.")
    logit_bias: float
    dtype: str = Field(description="The encoders' dtype.")
    device: str = Field(description="The kind of device the encoders run on: cuda or cpu.")
    fingerprint: str = Field(description="SHA-256 over the weight files. The same fingerprint "
                             "and dtype give the same vectors; never mix vectors of different "
                             "fingerprints in one index.")


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

TOKEN_IDS_MESSAGE = (
    "token IDs (lists of integers) instead of texts. Token IDs from another tokenizer mean "
    "nothing to SigLIP's own: send the texts themselves. LangChain's OpenAIEmbeddings sends OpenAI "
    "tokenizer IDs unless it is created with check_embedding_ctx_length=False.")


def _is_token_ids(value) -> bool:
    def ids(values) -> bool:
        return isinstance(values, list) and bool(values) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values)

    return ids(value) or (isinstance(value, list) and bool(value) and all(map(ids, value)))


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | Annotated[list[Item], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Accepted when it is the model's "
                                   "embedding size: SigLIP was not trained for shorter embeddings.")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _not_token_ids(cls, value):
        if _is_token_ids(value):
            raise PydanticCustomError("token_ids", TOKEN_IDS_MESSAGE)
        return value


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


Template = Annotated[str, Field(pattern=r"\{\}")]


class ClassifyRequest(_Request):
    model: str | None = None
    input: Annotated[list[ImageInput], Field(min_length=1)]
    labels: Annotated[list[str], Field(min_length=1)]
    hypothesis_template: Template | Annotated[list[Template], Field(min_length=1)] = Field(
        DEFAULT_HYPOTHESIS_TEMPLATE, description="Each label replaces the `{}` in it. A list is a "
        "prompt ensemble: a label's text embedding is the mean of its templates' unit embeddings, "
        "normalized again.")
    top_k: int | None = Field(None, ge=1, description="Predictions per image; all by default.")

    @property
    def templates(self) -> list[str]:
        template = self.hypothesis_template
        return [template] if isinstance(template, str) else template


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


# ---- collections ---------------------------------------------------------------------------

class CollectionCreateRequest(_Request):
    name: str = Field(description="1 to 64 of a-z, 0-9, _ and -.")


class Collection(BaseModel):
    object: Literal["collection"] = "collection"
    name: str
    count: int = Field(description="Items stored.")
    dimensions: int
    model: str = Field(description="The model whose vectors it holds; another model's are refused.")
    indexed: bool = Field(description="Whether search uses an approximate index (else exact).")


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Collection]


class CollectionDeleted(BaseModel):
    object: Literal["collection"] = "collection"
    name: str
    deleted: Literal[True] = True


class CollectionItemInput(_Request):
    id: str = Field(min_length=1, max_length=256, description="Adding an id again replaces that item.")
    image: str | None = Field(None, description="An http(s) URL, a data URI or raw base64.")
    text: str | None = None
    metadata: dict[str, Any] | None = Field(None, description="A JSON object, returned by search "
                                            "and matched by its `filter`.")

    @model_validator(mode="after")
    def _one_input(self) -> "CollectionItemInput":
        if (self.image is None) == (self.text is None):
            raise PydanticCustomError("one_input", "give exactly one of image and text")
        return self


class CollectionItemsRequest(_Request):
    model: str | None = None
    items: Annotated[list[CollectionItemInput], Field(min_length=1)]


class CollectionItem(BaseModel):
    id: str
    object: Literal["collection.item"] = "collection.item"


class CollectionItemsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionItem]
    usage: Usage


class CollectionItemDeleted(CollectionItem):
    deleted: Literal[True] = True


FilterValue = StrictStr | StrictInt | StrictFloat | StrictBool


class CollectionSearchRequest(_Request):
    model: str | None = None
    query: Item
    top_k: int = Field(10, ge=1, le=1000)
    filter: dict[str, FilterValue] = Field(default_factory=dict, description="Keeps the items whose "
                                           "metadata has each key with exactly that value.")
    include_metadata: bool = True


class SearchMatch(BaseModel):
    id: str
    score: float = Field(description="The item's /v1/rerank relevance_score for this query: an "
                         "independent sigmoid probability.")
    metadata: dict[str, Any] | None = None


class CollectionSearchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[SearchMatch] = Field(description="Highest score first.")
    usage: Usage
