"""What the ingress checks before any work is done: the API key, the body size, and the
request's item counts and text lengths against the configured limits."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.config import InputLimits
from deployments.errors import ApiError, error_response
from deployments.protocol import ErrorInfo

API_KEYS_ENV_VAR = "SIGLIP_API_KEYS"
API_KEYS_FILE_ENV_VAR = "SIGLIP_API_KEYS_FILE"
# The keys' SHA-256 digests, in hex: how siglip-serve passes keys to a running cluster, so
# that no key sits in the deployed config (deployments/launch.py).
API_KEY_DIGESTS_ENV_VAR = "SIGLIP_API_KEY_SHA256"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The accepted keys, compared in constant time: the time taken reveals neither which key
    nor how much of one matched."""

    def __init__(self, digests: Iterable[bytes]):
        self._digests = list(digests)
        if not self._digests:
            raise ValueError("no API keys given")

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, key: str) -> bool:
        digest = key_digest(key)
        matches = [hmac.compare_digest(digest, known) for known in self._digests]  # no early exit
        return any(matches)

    @classmethod
    def from_environment(cls, environ=os.environ) -> ApiKeys | None:
        """Keys from SIGLIP_API_KEYS (comma-separated), the file SIGLIP_API_KEYS_FILE names
        (one per line, `#` comments) and SIGLIP_API_KEY_SHA256 (digests, comma-separated), so
        they come from a secret, never from the YAML. None when none is set: the API is open."""
        keys = [key.strip() for key in environ.get(API_KEYS_ENV_VAR, "").split(",")]
        if path := environ.get(API_KEYS_FILE_ENV_VAR):
            lines = Path(path).read_text().splitlines()
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        digests = [key_digest(key) for key in keys if key]
        digests += [_sha256_from_hex(text.strip())
                    for text in environ.get(API_KEY_DIGESTS_ENV_VAR, "").split(",") if text.strip()]
        names = (API_KEYS_ENV_VAR, API_KEYS_FILE_ENV_VAR, API_KEY_DIGESTS_ENV_VAR)
        if any(name in environ for name in names) and not digests:
            raise ValueError(f"{' / '.join(names)} are set but hold no key")
        return cls(digests) if digests else None


def _sha256_from_hex(text: str) -> bytes:
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError(f"{API_KEY_DIGESTS_ENV_VAR} holds {text[:8]}..., not a SHA-256 digest in hex")
    return digest


@dataclass(frozen=True)
class GateSettings:
    api_keys: ApiKeys | None
    max_body_bytes: int


class RequestGate:
    """ASGI middleware: a `/v1` request without a valid `Authorization: Bearer` key gets a 401,
    and a body larger than the limit a 413, before the body is read past the limit. Other paths
    (health, docs) stay open."""

    def __init__(self, app: ASGIApp, settings: GateSettings):
        self._app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        settings = self._settings
        if settings.api_keys is not None and _api_path(scope).startswith("/v1"):
            if not settings.api_keys.accepts(_bearer_token(scope)):
                return await _refuse(scope, receive, send, 401, ErrorInfo(
                    message="Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                    type="invalid_request_error", code="invalid_api_key"),
                    {"WWW-Authenticate": "Bearer"})
        body = await _read_body(scope, receive, settings.max_body_bytes)
        if body is None:
            return await _refuse(scope, receive, send, 413, ErrorInfo(
                message=f"The request body is larger than {settings.max_body_bytes} bytes "
                        "(max_body_bytes).", type="invalid_request_error", code="body_too_large"))

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()  # after the body, only a disconnect can come
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self._app(scope, replay, send)


def _api_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _bearer_token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body, or None as soon as it is known to pass max_bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            return None
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)  # the client went away; the app sees the disconnect
        body += message.get("body", b"")
        if len(body) > max_bytes:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, info: ErrorInfo,
                  headers: dict[str, str] | None = None) -> None:
    await error_response(status, info, headers=headers)(scope, receive, send)


def check_request_size(limits: InputLimits, images: int, texts: Iterable[tuple[str, str]],
                       labels: int = 0, documents: int = 0) -> None:
    """Raises a 400 naming the limit a request passes. `texts` are (param, text) pairs."""
    for count, limit, what in ((images, limits.max_images_per_request, "images"),
                               (labels, limits.max_labels_per_request, "labels"),
                               (documents, limits.max_documents_per_request, "documents")):
        if count > limit:
            raise ApiError(400, f"The request has {count} {what}; the limit is {limit} "
                                f"(max_{what}_per_request).", code="limit_exceeded")
    texts = list(texts)
    if len(texts) > limits.max_texts_per_request:
        raise ApiError(400, f"The request has {len(texts)} texts; the limit is "
                            f"{limits.max_texts_per_request} (max_texts_per_request).",
                       code="limit_exceeded")
    for param, text in texts:
        if len(text) > limits.max_text_chars:
            raise ApiError(400, f"{param} has {len(text)} characters; the limit is "
                                f"{limits.max_text_chars} (max_text_chars).", param=param,
                           code="limit_exceeded")
