"""The Ingress's FastAPI app, built once per replica by `build_fastapi_app`: the request gate
(API keys, body size) in front, every error in OpenAI's shape, and the playground page at `/`.
The API's routes are the Ingress's own (deployments/ingress.py)."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import ApiError, error_response
from deployments.gate import GateSettings, RequestGate
from deployments.multipart import FormBodies
from deployments.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("ray.serve")

# Documented on every route, so that the OpenAPI page shows clients the error body.
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500)}

PLAYGROUND = Path(__file__).with_name("playground")

_FIELD = re.compile(r"^[a-z_]+$")
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "json"}


def build_fastapi_app(gate: GateSettings) -> FastAPI:
    app = FastAPI(title="SigLIP serving",
                  description="Zero-shot image classification, image and text embeddings and "
                              "image-text retrieval with SigLIP, in OpenAI-style JSON.",
                  responses=ERROR_RESPONSES)
    # The gate outside (added last): it bounds the body before a form is parsed.
    app.add_middleware(FormBodies)
    app.add_middleware(RequestGate, settings=gate)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _add_playground(app)
    return app


def _add_playground(app: FastAPI) -> None:
    """The page at `/` and its files under `/playground`, open without a key (the gate guards
    `/v1` only). Its URLs are relative to a `<base>` set to the app's route prefix."""
    page = (PLAYGROUND / "index.html").read_text()

    async def playground(request: Request) -> HTMLResponse:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        return HTMLResponse(page.replace('<base href="/">', f'<base href="{root}/">', 1))

    app.get("/", include_in_schema=False)(playground)
    app.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


def _param(location: tuple) -> str | None:
    """pydantic's error location as a field path (`input[2].image`), without the names of union
    members that pydantic puts in it."""
    path = ""
    for part in location[1:]:  # location[0] is "body"
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_NAMES:
            path += f".{part}" if path else part
    return path or None


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # With unions, pydantic reports one error per member; the deepest names the field best.
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        message = f"The body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        return error_response(400, ErrorInfo(message=message, type="invalid_request_error",
                                             code="invalid_json"))
    param = _param(tuple(first["loc"]))
    return error_response(400, ErrorInfo(message=f"{param or 'body'}: {first['msg']}",
                                         type="invalid_request_error", param=param,
                                         code="invalid_value"))


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # Bad input is answered before this point; reaching here is a server fault, still in
    # OpenAI's shape so that clients parse it.
    logger.exception("Request failed: %s %s", request.method, request.url.path)
    return error_response(500, ErrorInfo(message=f"Internal error: {type(error).__name__}",
                                         type="internal_error", code="internal_error"))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return error_response(error.status_code, ErrorInfo(message=str(error.detail), type=kind))
