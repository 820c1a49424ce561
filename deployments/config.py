"""Typed settings: the app builder's args (serve_config.yaml `args:`) and each encoder's
`user_config`. Unknown keys are errors here, because Ray's own schema drops them silently."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.core.checkpoint import DEFAULT_MODEL
from deployments.core.fetch import ImageUrlPolicy
from deployments.core.limits import ImageLimits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputLimits(ImageLimits):
    """What one request, and each image in it, may hold. Defaults suit a public API; past a
    limit the client gets a 413 (body) or a 400 that names the limit and its value."""

    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Request body, in bytes.")
    max_images_per_request: int = Field(64, ge=1, description="Images in one request, all "
                                        "fields together.")
    max_texts_per_request: int = Field(512, ge=1, description="Texts to embed, or labels, "
                                       "queries and documents that are text.")
    max_labels_per_request: int = Field(256, ge=1, description="Labels of one classify request.")
    max_documents_per_request: int = Field(256, ge=1, description="Documents of one rerank "
                                           "request.")
    max_text_chars: int = Field(2048, ge=1, description="Characters per text (after the "
                                "hypothesis template). The tokenizer keeps 64 tokens anyway.")


class CollectionsConfig(_Strict):
    """Stored collections of embedded items, searched by /v1/collections/{name}/search
    (docs/operations.md, "Collections")."""

    enabled: bool = Field(True, description="Serve /v1/collections, kept in LanceDB; false: "
                          "those routes answer 404 and no Collections stage is deployed.")
    uri: str = Field("./siglip-collections", description="Where the collections live: a local "
                     "folder (relative to where the replicas run: `serve run`'s folder on one "
                     "machine) or an object store URI (s3://, gs://, az://) that every replica "
                     "reaches. The SIGLIP_COLLECTIONS_URI environment variable overrides it.")
    index_threshold: int = Field(100_000, ge=256, description="Items in a collection past which "
                                 "it gets an approximate (IVF-PQ) index; below it, search is "
                                 "exact. POST /v1/collections/{name}/index builds one at any size.")


class SiglipAppArgs(_Strict):
    """Arguments of `deployments.app:build_app`."""

    model: str = Field(DEFAULT_MODEL, description="Hub id or local folder of a SigLIP checkpoint; "
                       "the SIGLIP_MODEL environment variable overrides it.")
    served_model_name: str | None = Field(None, description="The id clients send as `model`; "
                                          "defaults to `model`.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the encoders run. auto: CUDA when torch can use it, else the "
        "CPU (with a warning when Ray assigned a GPU that torch cannot use).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on the CPU. bfloat16 on a CPU with "
        "AMX is about 3x faster, and moves embeddings by about 1e-3 from the float32 reference "
        "(scores by more, the larger the checkpoint's logit scale).")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads per encoder replica for torch. Default: sized with "
        "the replicas (below, Sizing): on CPUs alone the cores shared among the encoder replicas; "
        "with GPUs what Ray gives the replica (OMP_NUM_THREADS, from its num_cpus).")
    request_timeout_s: float = Field(
        60, gt=0, description="A request still unanswered after this long gets a 504. Keep it "
        "below http_options.request_timeout_s, whose 408 is not in OpenAI's error shape.")
    stage_retries: int = Field(
        3, ge=0, le=10, description="Times a request's stage calls are re-sent when a replica "
        "died under them (inference is idempotent) before the client sees a 503.")
    images_per_call: int = Field(
        4, ge=1, description="A request's images go to the preprocessor and the vision encoder in "
        "calls of at most this many, so that a many-image request decodes and encodes on several "
        "replicas at once. Calls from all requests still share the encoders' batches.")
    texts_per_call: int = Field(
        8, ge=1, description="Likewise for the texts a request sends to the text encoder (those "
        "no cache holds): 10 new labels go as two calls of 5, on two replicas where there are two.")
    ingress_text_cache_size: int = Field(
        4096, ge=0, description="Text embeddings (label prompts, queries) each Ingress replica "
        "keeps, so that a classify with a known label set never calls the text encoder. About "
        "4.6 KB each for so400m; 0 turns it off. The text encoder's own cache is behind it.")
    ingress_image_cache_size: int = Field(
        4096, ge=0, description="Image embeddings each Ingress replica keeps, by the SHA-256 of "
        "the image as sent inline (data URI or base64), so that an image sent again costs neither "
        "a decode nor an encode. Images by URL are never kept: what a URL names can change. About "
        "4.6 KB each for so400m; 0 turns it off.")
    encoder_gpus: Literal["auto"] | Annotated[float, Field(ge=0)] = Field(
        "auto", description="GPUs per encoder replica. auto: 1 when the cluster has GPUs "
        "at deploy time, else 0. Set it explicitly on an autoscaling cluster that starts "
        "without GPU nodes.")
    jpeg_draft: bool = Field(
        False, description="Decode JPEGs at reduced scale (1/2 to 1/8, never below twice the model's "
        "input size): several times faster on camera photos, but pixels and scores move away "
        "from the reference processor's; benchmarks/serving.py measures by how much.")
    # What one request may hold; image URLs and their SSRF guard (docs/operations.md).
    limits: InputLimits = InputLimits()
    image_urls: ImageUrlPolicy = ImageUrlPolicy()
    collections: CollectionsConfig = CollectionsConfig()


class BatchingConfig(_Strict):
    """An encoder's dynamic batching, counted in items (images or texts), not requests."""

    # What `auto` means on each device. A GPU needs large batches for its throughput. On a CPU
    # one image, or a few texts, already keep the matrix units busy: larger batches cost about
    # as much per item, and only hold each request until a longer forward pass ends.
    AUTO_MAX_BATCH_SIZE: ClassVar[dict[str, int]]

    max_batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = Field(
        "auto", description="Items per forward pass (below, what auto means on each device). "
        "Ray never puts more calls in a batch than the deployment's max_ongoing_requests: keep "
        "that at least this.")
    batch_wait_timeout_s: float = Field(
        0, ge=0, le=10, description="How long a batch that is not full waits for more items "
        "before its forward pass. 0: none, as Triton's dynamic batcher by default; batches still "
        "form under load, from whatever arrives during the previous forward pass.")

    def max_batch_size_on(self, device_type: str) -> int:
        """Items per forward pass for an encoder on `device_type` ("cuda" or "cpu")."""
        return self.AUTO_MAX_BATCH_SIZE[device_type] if self.max_batch_size == "auto" else self.max_batch_size


class VisionEncoderConfig(BatchingConfig):
    AUTO_MAX_BATCH_SIZE: ClassVar[dict[str, int]] = {"cuda": 32, "cpu": 8}


class TextEncoderConfig(BatchingConfig):
    AUTO_MAX_BATCH_SIZE: ClassVar[dict[str, int]] = {"cuda": 64, "cpu": 16}

    cache_size: int = Field(20_000, ge=0, description="Text embeddings kept in the LRU cache; "
                            "0 turns it off.")
