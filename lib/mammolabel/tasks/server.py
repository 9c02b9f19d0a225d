"""What the MammoLabel app adds to the MONAI Label server.

- Errors a client can fix become JSON 4xx answers with a message, never a traceback; anything else
  is a JSON 500 naming what failed (the traceback goes to the log only).
- :class:`RequestGuard` refuses an upload larger than ``MAMMOLABEL_MAX_UPLOAD_MB`` by its
  Content-Length (before the body is read), form parameters and JSON bodies that are not a JSON object
  or are nested absurdly deep, and uploaded file names too long to store (before MONAI Label trips
  over them). It bounds inference concurrency: requests beyond ``MAMMOLABEL_MAX_CONCURRENT_INFER``
  wait in a queue of at most ``MAMMOLABEL_MAX_QUEUED_INFER``; past that the answer is 429 (busy,
  retry) rather than unbounded memory. Without authentication it also refuses to replace or delete a
  model file over HTTP (``PUT``/``DELETE /model/<name>``), so no anonymous request writes outside the
  datastore; ``MAMMOLABEL_ALLOW_MODEL_UPLOAD=true`` allows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import PurePath
from typing import Any

from fastapi import FastAPI, Request
from starlette.datastructures import UploadFile
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelError
from monailabel.interfaces.exception import MONAILabelException
from monailabel.config import settings

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
    return JSONResponse(status_code=400, content={"detail": f"parameters are not valid JSON: {exc}",
                                                  "error": "JSONDecodeError"})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """Last resort: a 500 that names what failed, without the traceback (which goes to the log)."""
    logger.error(f"{request.method} {request.url.path}: unexpected {type(exc).__name__}: {exc}")
    return JSONResponse(status_code=500, content={"detail": f"internal error while serving {request.url.path}: "
                                                            f"{type(exc).__name__}: {str(exc)[:300]}",
                                                  "error": type(exc).__name__})


MAX_JSON_DEPTH = 32
MAX_FILENAME = 200


def json_problem(text: str | bytes, what: str) -> str | None:
    """Why ``text`` is not a usable JSON object of parameters (None when it is)."""
    try:
        value = json.loads(text)
    except RecursionError:
        return f"'{what}' is nested too deeply"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"'{what}' is not valid JSON: {e}"
    if not isinstance(value, dict):
        return f"'{what}' must be a JSON object, got {type(value).__name__}"
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"'{what}' is nested more than {MAX_JSON_DEPTH} levels deep"
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return None


def filename_problem(name: str) -> str | None:
    """Why an uploaded file's name cannot be stored (None when it can)."""
    if len(name.encode("utf-8", "replace")) > MAX_FILENAME:
        return f"uploaded file name longer than {MAX_FILENAME} bytes"
    if len("".join(PurePath(name).suffixes)) > 32:
        return f"uploaded file name {name[:60]!r} has an extension longer than 32 characters"
    return None


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class RequestGuard:
    """ASGI middleware: parameter checks, upload size limit and bounded inference concurrency."""

    FORM_FIELDS = ("params", "info")

    def __init__(self, app: ASGIApp, known: dict[str, set[str]] | None = None, max_concurrent: int = 2,
                 max_queued: int = 100, max_upload_mb: int = 1024, model_writes: bool = False):
        self.app, self.max_queued, self.max_upload = app, max_queued, max_upload_mb * 1024 * 1024
        self.known, self.model_writes = known or {}, model_writes
        self.slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in ("PUT", "DELETE") and scope["path"].startswith("/model/")
                and not self.model_writes):
            return await self._answer(scope, send, 403, "replacing or deleting a model over HTTP needs authentication "
                                      "(MONAI_LABEL_AUTH_ENABLE); copy the checkpoint into the server's model folder")
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        unknown = self._unknown_name(scope["path"])
        if unknown:
            return await self._answer(scope, send, 404, unknown)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_upload:
            return await self._answer(scope, send, 413 if length.isdigit() else 400,
                                      f"upload larger than {self.max_upload >> 20} MB" if length.isdigit()
                                      else "invalid Content-Length")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_upload:
                return await self._answer(scope, send, 413, f"upload larger than {self.max_upload >> 20} MB")

        def replay() -> Receive:
            sent = False

            async def receive_again() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return receive_again

        problem = await self._check_form(scope, replay(), bytes(body))
        if problem:
            return await self._answer(scope, send, 400, problem)
        if not scope["path"].startswith("/infer/"):
            return await self.app(scope, replay(), send)
        if self.waiting >= self.max_queued:
            return await self._answer(scope, send, 429, "server busy: too many inference requests queued; retry later")
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            return await self.app(scope, replay(), send)
        finally:
            self.slots.release()

    def _unknown_name(self, path: str) -> str | None:
        """Train and scoring requests run in the background: refuse unknown names before they are queued."""
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] in self.known and parts[1] not in self.known[parts[0]]:
            names = ", ".join(sorted(self.known[parts[0]])) or "none"
            return f"unknown {parts[0]} task '{parts[1]}'; known: {names}"
        return None

    async def _check_form(self, scope: Scope, receive: Receive, body: bytes) -> str | None:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if content_type.startswith("application/json") and body.strip():
            return json_problem(body, "request body")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return None
        request = Request(scope, receive)
        try:
            form = await request.form()
        except Exception as e:  # a malformed multipart body
            return f"malformed form data: {e}"
        try:
            for name in self.FORM_FIELDS:
                text = form.get(name)
                if isinstance(text, str) and text.strip():
                    problem = json_problem(text, name)
                    if problem:
                        return problem
            for _, value in form.multi_items():
                problem = filename_problem(value.filename or "") if isinstance(value, UploadFile) else None
                if problem:
                    return problem
        finally:
            await form.close()
        return None

    async def _answer(self, scope: Scope, send: Send, status: int, detail: str) -> None:
        logger.warning(f"{scope['method']} {scope['path']}: {status} {detail}")
        headers = {"Retry-After": "5"} if status == 429 else None
        response = JSONResponse(status_code=status, content={"detail": detail}, headers=headers)
        await response(scope, None, send)


def install_error_handlers(app: FastAPI, known: dict[str, set[str]]) -> None:
    """Add the error handlers and the :class:`RequestGuard` to the running server.

    ``known`` maps ``train`` and ``scoring`` to the task names the app serves.

    The app is created by MONAI Label before ours is loaded, so the middleware stack is reset
    (it is rebuilt, with these, on the next request).
    """
    app.add_exception_handler(MammoLabelError, _mammolabel_error)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.add_exception_handler(json.JSONDecodeError, _json_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.middleware_stack = None
    app.add_middleware(
        RequestGuard,
        known=known,
        max_concurrent=_env_int("MAMMOLABEL_MAX_CONCURRENT_INFER", 2),
        max_queued=_env_int("MAMMOLABEL_MAX_QUEUED_INFER", 100),
        max_upload_mb=_env_int("MAMMOLABEL_MAX_UPLOAD_MB", 1024),
        model_writes=settings.MONAI_LABEL_AUTH_ENABLE
        or os.environ.get("MAMMOLABEL_ALLOW_MODEL_UPLOAD", "").lower() in ("1", "true", "yes"),
    )
