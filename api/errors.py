"""Maps domain errors to HTTP responses, in one place."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ingest.errors import InvalidUpload
from kb.errors import Conflict, InvalidRequest, NotFound

STATUS = {NotFound: 404, Conflict: 409, InvalidRequest: 422}


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", None) or next(c for t, c in STATUS.items() if isinstance(exc, t))
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    for exc_type in (*STATUS, InvalidUpload):
        app.add_exception_handler(exc_type, handle)
