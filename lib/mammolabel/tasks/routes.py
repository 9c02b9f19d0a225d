"""MONAI Label's endpoints, as the MammoLabel server serves them.

MONAI Label 0.8.5 declares its endpoints ``async`` but does blocking work in them (reading uploads,
inference, synchronous training), which stops every other request, ``/info`` included. Each of its
endpoints here runs in the worker pool instead (:func:`offload`), and a few are replaced by versions
that check first (:func:`install_routes`):

- ``POST /infer/<model>``: ``params`` may not rename the model, the image or the label; an image id
  must exist; a path reaches the task only for this request's own upload or session.
- ``PUT /datastore/image``: ``overwrite=true`` (query or params) is needed to replace an image.
- ``PUT /session/?uncompress=true``: an archive member that would land outside the session folder
  (absolute, ``..``, links, devices) or an archive larger than the limit is refused before unpacking.
- ``POST /train/<task>``: the options are checked (types, upper bounds, checkpoint names in the model
  folder) before a background training is queued.
- ``GET /logs``: needs the admin role with authentication; without it, ``MAMMOLABEL_ALLOW_LOGS=true``.
- ``GET /ohif/<path>``: only files inside the viewer's folder.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import PurePosixPath
from typing import Any, Callable, List, Optional

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints import logs as stock_logs
from monailabel.endpoints import ohif as stock_ohif
from monailabel.endpoints import session as stock_session
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_mime_type
from starlette.concurrency import run_in_threadpool

from mammolabel.confine import WRITE_OPTIONS, READ_OPTIONS, confine_train_options, is_inside
from mammolabel.errors import InputError, MammoLabelError, NotFoundError

#: What the request being served may pass to an infer task as a path: "upload" and/or "session".
REQUEST_PATHS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("request_paths", default=frozenset())

MAX_ARCHIVE_MEMBERS = 10_000


class ForbiddenError(MammoLabelError):
    status_code = 403


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _threaded(endpoint: Callable) -> Callable:
    """An ``async`` endpoint that runs ``endpoint`` (async, but blocking inside) in the worker pool."""

    async def run(**kwargs: Any) -> Any:
        return await run_in_threadpool(lambda: asyncio.run(endpoint(**kwargs)))

    run.__signature__ = inspect.signature(endpoint)
    run.__name__, run.__doc__ = endpoint.__name__, endpoint.__doc__
    return run


def _route_like(route: APIRoute, endpoint: Callable) -> APIRoute:
    return APIRoute(route.path, endpoint, methods=list(route.methods), name=route.name, summary=route.summary,
                    tags=route.tags, responses=route.responses, deprecated=route.deprecated,
                    include_in_schema=route.include_in_schema, response_class=route.response_class)


def _routers(router: Any, prefix: str = "") -> list[tuple[Any, str]]:
    """``router`` and every router included in it, each with the path prefix it is served under."""
    found = [(router, prefix)]
    for route in router.routes:
        included = getattr(route, "original_router", None)  # FastAPI includes routers lazily
        if included is not None:
            found += _routers(included, prefix + route.include_context.prefix)
    return found


def _swap(app: FastAPI, pick: Callable[[APIRoute, str], Callable | None]) -> int:
    """Replace each API route for which ``pick(route, full path)`` gives a new endpoint; return how many."""
    swapped = 0
    for router, prefix in _routers(app.router):
        for i, route in enumerate(router.routes):
            endpoint = pick(route, prefix + route.path) if isinstance(route, APIRoute) else None
            if endpoint is not None:
                router.routes[i] = _route_like(route, endpoint)
                swapped += 1
        if swapped and hasattr(router, "_mark_routes_changed"):
            router._mark_routes_changed()
    return swapped


#: Cheap endpoints that stay on the event loop, so that they answer even when every worker is busy.
ON_LOOP = ("/info/",)


def offload(app: FastAPI) -> None:
    """Run every MONAI Label endpoint declared ``async`` in the worker pool (except :data:`ON_LOOP`)."""
    _swap(app, lambda route, full: _threaded(route.endpoint) if inspect.iscoroutinefunction(route.endpoint)
          and route.endpoint.__module__.startswith("monailabel.endpoints") and full not in ON_LOOP else None)


def _replace(app: FastAPI, path: str, method: str, endpoint: Callable) -> None:
    if not _swap(app, lambda route, full: endpoint if full == path and method in route.methods else None):
        raise RuntimeError(f"MONAI Label has no route {method} {path}")


def _params(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text and text.strip() else {}
    if not isinstance(value, dict):
        raise InputError(f"'params' must be a JSON object, got {type(value).__name__}")
    return value


# --- infer -------------------------------------------------------------------------------------------------

def run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: Optional[stock_infer.ResultType] = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    instance = app_instance()
    if model not in instance.info()["models"]:
        raise NotFoundError(f"unknown model '{model}'; known: {', '.join(sorted(instance.info()['models']))}")
    p = _params(params)
    for key in ("model", "image", "label", "session", "file"):
        if key in p:
            raise InputError(f"params may not set '{key}': name the model in the URL, the image with ?image=, "
                             "a file or label as form fields")
    if not (file or image or session_id):
        raise InputError("give an image id (?image=), an image file or a session id")
    if image and not file and not session_id:
        instance.check_image(image)
    allowed = frozenset({"upload"} if file else set()) | frozenset({"session"} if session_id else set())
    token = REQUEST_PATHS.set(allowed)
    try:
        return stock_infer.run_inference(background_tasks, model, image, session_id, params, file, label, output)
    finally:
        REQUEST_PATHS.reset(token)


# --- datastore ---------------------------------------------------------------------------------------------

def add_image(
    background_tasks: BackgroundTasks,
    image: Optional[str] = None,
    overwrite: bool = False,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    p = _params(params)
    if overwrite:
        p["overwrite"] = True
    return stock_datastore.add_image(background_tasks, image, json.dumps(p), file, user.username)


# --- session -----------------------------------------------------------------------------------------------

def check_archive(upload: UploadFile, max_bytes: int) -> None:
    """Refuse an archive whose members would leave the folder it is unpacked into, or that is too big."""
    name = upload.filename or ""
    fmt = next((f for f, exts, _ in shutil.get_unpack_formats() if name.lower().endswith(tuple(exts))), None)
    if fmt is None:
        raise InputError(f"uncompress=true needs an archive (.zip, .tar, .tar.gz, ...), got {name!r}")
    members: list[tuple[str, int, bool]] = []  # name, size, plain file or folder
    try:
        if fmt == "zip":
            with zipfile.ZipFile(upload.file) as z:
                members = [(i.filename, i.file_size, (i.external_attr >> 16) & 0o170000 in (0, 0o100000, 0o040000))
                           for i in z.infolist()]
        else:
            with tarfile.open(fileobj=upload.file) as t:
                members = [(m.name, m.size, m.isfile() or m.isdir()) for m in t.getmembers()]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise InputError(f"{name}: not a readable {fmt} archive ({e})") from e
    finally:
        upload.file.seek(0)
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InputError(f"{name}: more than {MAX_ARCHIVE_MEMBERS} archive members")
    for member, _, plain in members:
        parts = PurePosixPath(member.replace("\\", "/")).parts
        if not plain or member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(f"{name}: archive member {member!r} would land outside the session folder "
                             "(absolute, '..', link or device)")
    if sum(size for _, size, _ in members) > max_bytes:
        raise InputError(f"{name}: archive expands to more than {max_bytes >> 20} MB")


def create_session(
    background_tasks: BackgroundTasks,
    uncompress: bool = False,
    expiry: int = 0,
    files: List[UploadFile] = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    if uncompress:
        limit = int(os.environ.get("MAMMOLABEL_MAX_UPLOAD_MB", 1024)) * 4 << 20
        for f in files:
            check_archive(f, limit)
    return stock_session.create_session(background_tasks, uncompress, expiry, files)


# --- train -------------------------------------------------------------------------------------------------

def check_train_options(model: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The request's options with checkpoint names made paths in the model folder; 4xx when unusable."""
    from mammolabel.tasks.train import MammoTrainTask

    trainer = app_instance()._trainers.get(model)
    if trainer is None:
        raise NotFoundError(f"unknown train task '{model}'")
    params = dict(params or {})
    if isinstance(trainer, MammoTrainTask):
        params = confine_train_options(params, trainer.model_dir)
        trainer.check(trainer.options(params))
    return params


def run_train(
    model: str,
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    enqueue: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    return stock_train.run_model(model, check_train_options(model, params), run_sync, enqueue)


def run_all_trainings(
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    params = dict(params or {})
    for model in app_instance().info()["trainers"]:
        own = params.get(model) if isinstance(params.get(model), dict) else {}
        options = {**{k: v for k, v in params.items() if not isinstance(v, dict)}, **own}
        named = [k for k in WRITE_OPTIONS + READ_OPTIONS if k in options]
        if named:
            raise InputError(f"options {named} name files: give them per task with POST /train/<task>")
        check_train_options(model, options)
    return stock_train.run(params, run_sync)


# --- logs and viewer ---------------------------------------------------------------------------------------

def _check_logs_allowed() -> None:
    if not settings.MONAI_LABEL_AUTH_ENABLE and not _env_flag("MAMMOLABEL_ALLOW_LOGS"):
        raise ForbiddenError("the server log needs the admin role: enable authentication (MONAI_LABEL_AUTH_ENABLE) "
                             "or set MAMMOLABEL_ALLOW_LOGS=true on a machine only you use")


def get_logs(
    lines: Optional[int] = 300,
    html: Optional[bool] = True,
    text: Optional[bool] = False,
    refresh: Optional[int] = 0,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    _check_logs_allowed()
    if lines is not None and not 0 <= lines <= 100_000:
        raise InputError("lines must lie in 0..100000")
    path = os.path.join(settings.MONAI_LABEL_APP_DIR, "logs", "app.log")
    if not os.path.isfile(path):
        raise NotFoundError("no server log file")
    return stock_logs.get_logs(path, lines, html, text, refresh)


def gpu_info(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    _check_logs_allowed()
    tool = shutil.which("nvidia-smi")
    if tool is None:
        raise NotFoundError("no NVIDIA GPU information on this server (nvidia-smi is not installed)")
    try:
        out = subprocess.run([tool], capture_output=True, timeout=10).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NotFoundError(f"nvidia-smi did not answer ({e})") from e
    return Response(content=out, media_type="text/plain")


def get_ohif(path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    root = os.path.join(os.path.dirname(os.path.realpath(stock_ohif.__file__)), "static", "ohif")
    file = os.path.join(root, "index.html")
    if path:
        candidate = os.path.realpath(os.path.join(root, path))
        if not is_inside(candidate, [root]):
            raise NotFoundError("no such viewer resource")
        file = candidate if os.path.isfile(candidate) else file
    if not os.path.isfile(file):
        raise NotFoundError("the OHIF viewer is not installed on this server")
    return FileResponse(file, media_type=get_mime_type(file))


def install_routes(app: FastAPI) -> None:
    """Offload MONAI Label's endpoints and put the checked versions above in their place."""
    offload(app)
    _replace(app, "/infer/{model}", "POST", run_inference)
    _replace(app, "/datastore/image", "PUT", add_image)
    _replace(app, "/datastore/", "PUT", add_image)
    _replace(app, "/session/", "PUT", create_session)
    _replace(app, "/train/{model}", "POST", run_train)
    _replace(app, "/train/", "POST", run_all_trainings)
    _replace(app, "/logs/", "GET", get_logs)
    _replace(app, "/logs/gpu", "GET", gpu_info)
    _replace(app, "/ohif/{path:path}", "GET", get_ohif)
