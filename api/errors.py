"""Maps domain errors to HTTP responses, in one place, and documents their shape in the OpenAPI schema."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from kb.errors import InvalidUpload

STATUS = {NotFound: 404, Conflict: 409, InvalidRequest: 422, Forbidden: 403}
# nginx's "client closed request": the client left before its body was read, no one reads the answer
CLIENT_CLOSED = 499
# the ``detail`` of a domain error (and of an HTTPException): one sentence instead of FastAPI's field list
ERROR_MESSAGE = {"type": "string", "title": "Message", "description": "why the request was refused"}


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", None) or next(c for t, c in STATUS.items() if isinstance(exc, t))
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    async def client_gone(request: Request, exc: Exception) -> Response:
        # a client that hung up mid-body (a sender's timeout under load) is not a server error: no traceback
        return Response(status_code=CLIENT_CLOSED)

    for exc_type in (*STATUS, InvalidUpload):
        app.add_exception_handler(exc_type, handle)
    app.add_exception_handler(ClientDisconnect, client_gone)
    _document_error_messages(app)


def _document_error_messages(app: FastAPI) -> None:
    """FastAPI documents every 422 as its list of field errors; an ``InvalidRequest`` (a 422 too) answers with a
    message. The schema's ``detail`` says it is one or the other, so clients (and the fuzz tests) can rely on it."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = generate().get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                field_errors = schemas["HTTPValidationError"]["properties"]["detail"]
                schemas["HTTPValidationError"]["properties"]["detail"] = {
                    "anyOf": [field_errors, ERROR_MESSAGE], "title": "Detail"}
        return app.openapi_schema

    app.openapi = openapi
