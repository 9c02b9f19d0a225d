"""What the MammoLabel app adds to the MONAI Label server: clear 4xx answers instead of tracebacks."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelError
from monailabel.interfaces.exception import MONAILabelException

from mammolabel.errors import MammoLabelError

logger = logging.getLogger("mammolabel")

_MONAILABEL_STATUS = {MONAILabelError.INVALID_INPUT: 400, MONAILabelError.APP_ERROR: 400}


async def _mammolabel_error(request: Request, exc: MammoLabelError) -> JSONResponse:
    logger.warning(f"{request.method} {request.url.path}: {exc}")
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc), "error": type(exc).__name__})


async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        status = 404
    else:
        status = _MONAILABEL_STATUS.get(exc.error, 500)
    logger.warning(f"{request.method} {request.url.path}: {exc.msg}")
    return JSONResponse(status_code=status, content={"detail": exc.msg, "error": exc.error.value})


async def _json_error(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    """Request parameters (``params``, ``info``) that are not JSON are the client's error."""
    logger.warning(f"{request.method} {request.url.path}: {exc}")
    return JSONResponse(status_code=400, content={"detail": f"parameters are not valid JSON: {exc}", "error": "JSONDecodeError"})


def install_error_handlers(app: FastAPI) -> None:
    """Map MammoLabel and MONAI Label errors to JSON 4xx answers on the running server.

    The app is created by MONAI Label before ours is loaded, so the middleware stack that
    captured the handlers is rebuilt on the next request.
    """
    app.add_exception_handler(MammoLabelError, _mammolabel_error)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.add_exception_handler(json.JSONDecodeError, _json_error)
    app.middleware_stack = None
