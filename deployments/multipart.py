"""multipart/form-data bodies for /v1/classify, /v1/embeddings and /v1/rerank, turned into the
JSON body each route takes, so that both shapes get the same validation, limits and errors:

    curl -F image=@cat.jpg -F labels=cat -F labels=dog localhost:8000/v1/classify

A file part is an image, sent on as base64; a text part is what the JSON field would hold. The
parts of a list field keep their order, and `image` parts join the route's list of items
(`input`, or rerank's `documents`) where they stand."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.errors import error_response
from deployments.protocol import ErrorInfo


@dataclass(frozen=True)
class FormFields:
    """How one route's form fields map to its JSON body."""

    items: str  # the list of items that file parts named `image` join
    lists: frozenset[str] = field(default_factory=frozenset)  # repeated fields, texts or files
    one_or_many: frozenset[str] = field(default_factory=frozenset)  # a string, or a list if repeated
    single_items: frozenset[str] = field(default_factory=frozenset)  # one text or one file
    scalars: frozenset[str] = field(default_factory=frozenset)  # one text each
    text_only: frozenset[str] = field(default_factory=frozenset)  # list fields that take no file

    def all_names(self) -> set[str]:
        return {"image", *self.lists, *self.one_or_many, *self.single_items, *self.scalars}


FORM_ROUTES = {
    "/v1/classify": FormFields(items="input", lists=frozenset({"input", "labels"}),
                               one_or_many=frozenset({"hypothesis_template"}),
                               scalars=frozenset({"model", "top_k"}),
                               text_only=frozenset({"labels", "hypothesis_template"})),
    "/v1/embeddings": FormFields(items="input", lists=frozenset({"input"}),
                                 scalars=frozenset({"model", "encoding_format", "dimensions", "user"})),
    "/v1/rerank": FormFields(items="documents", lists=frozenset({"documents"}),
                             single_items=frozenset({"query"}),
                             scalars=frozenset({"model", "top_n", "return_documents"})),
}


class FormError(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


async def form_to_json(fields: FormFields, parts: list[tuple[str, str | UploadFile]]) -> dict:
    """The JSON body the route takes, from the form's parts in order."""
    body: dict = {}
    for name, value in parts:
        if name not in fields.all_names():
            raise FormError(f"Unknown form field '{name}'; this route reads "
                            f"{', '.join(sorted(fields.all_names()))}.", name)
        key = fields.items if name == "image" else name
        if isinstance(value, UploadFile):
            if key in fields.text_only or key in fields.scalars:
                raise FormError(f"The form field '{name}' must be text, not a file.", name)
            value = {"image": base64.b64encode(await value.read()).decode("ascii")}
        elif name == "image":
            raise FormError("The form field 'image' must be a file (curl -F image=@photo.jpg).", name)
        if key in fields.lists:
            body.setdefault(key, []).append(value)
        elif key in fields.one_or_many and key in body:  # a second one: the field becomes a list
            body[key] = [*body[key], value] if isinstance(body[key], list) else [body[key], value]
        elif key in body:
            raise FormError(f"The form field '{name}' is given more than once.", name)
        else:
            body[key] = value
    return body


class FormBodies:
    """ASGI middleware: a multipart/form-data POST to one of FORM_ROUTES goes on as the JSON body
    it stands for; a form that cannot be read gets a 400 naming the part. Behind the request
    gate, which has already bounded the body's size."""

    def __init__(self, app: ASGIApp):
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields = FORM_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if fields is None or scope["method"] != "POST":
            return await self._app(scope, receive, send)
        request = Request(scope, receive)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await self._app(scope, receive, send)
        try:
            # No cap per part of our own: the gate has bounded the whole body.
            async with request.form(max_part_size=2**31) as form:
                body = json.dumps(await form_to_json(fields, list(form.multi_items()))).encode()
        except FormError as error:
            return await _refuse(scope, receive, send, str(error), error.param)
        except Exception as error:  # python-multipart's and Starlette's parse errors
            message = getattr(error, "detail", None) or str(error)
            return await _refuse(scope, receive, send, f"The multipart/form-data body cannot be read: {message}")
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body, only a disconnect can come
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str, param: str | None = None) -> None:
    await error_response(400, ErrorInfo(message=message, type="invalid_request_error", param=param,
                                        code="invalid_form"))(scope, receive, send)


def form_openapi(path: str) -> dict:
    """The form's fields as an OpenAPI multipart/form-data request body, for the route's
    `openapi_extra` (FastAPI merges it beside the JSON body)."""
    fields = FORM_ROUTES[path]
    image = {"type": "string", "format": "binary"}
    properties = {"image": {"type": "array", "items": image,
                            "description": f"Image files; they join `{fields.items}` where they stand."}}
    for name in sorted(fields.all_names() - {"image"}):
        if name in fields.lists or name in fields.one_or_many:
            item = {"type": "string"} if name in fields.text_only else {"anyOf": [{"type": "string"}, image]}
            properties[name] = {"type": "array", "items": item}
        elif name in fields.single_items:
            properties[name] = {"anyOf": [{"type": "string"}, image]}
        else:
            properties[name] = {"type": "string"}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties}}}}}
