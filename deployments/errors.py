"""Errors as the client sees them: OpenAI's error body, counted by type."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from deployments.metrics import request_errors
from deployments.protocol import ErrorInfo, ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        return error_response(self.status, self.info, self.retry_after_s)


def error_response(status: int, info: ErrorInfo, retry_after_s: float | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    request_errors().inc(tags={"type": info.type})
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return JSONResponse(ErrorResponse(error=info).model_dump(), status_code=status, headers=headers)
