"""The feature browser: a FastAPI app serving a JSON API under ``/api/`` and the static front end at ``/``.

Routes (every error is a JSON ``{"error": ...}``: 404 for what the run lacks, 400/422 for bad input)::

    GET  /api/overview                          the LM, SAE metrics, interpretability, pictures
    GET  /api/dicts/{dict}/units?sort&order&offset&limit&q&token&min_density&max_density&min_score
    GET  /api/saes/{sae}/features/{id}          a feature's dashboard
    GET  /api/neurons/{id}                      a neuron's dashboard
    GET  /api/files/{folder}/{name}             a picture of the run (plots/, toy/, splitting/, …)
    POST /api/live   {text, dictionary}              which units fire on which token of the text
    POST /api/steer  {sae, feature, value, prompt, mode, n_tokens, seed}

Requests with a body over 64 KiB get 413, and by default a ``Host`` other than this machine's
loopback names gets 400 (``guards.py``). Database and model work runs in the thread pool (plain
``def`` routes), so the event loop keeps answering while a forward pass runs. Routes return
``JSONResponse`` of plain dicts directly, skipping
FastAPI's per-value re-encoding (a feature page holds thousands of numbers). Each response carries
``Server-Timing: app;dur=<ms>``.
"""

from __future__ import annotations

import logging
import time
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from monosemantic.browser.guards import LOOPBACK_HOSTS, BodyLimit, HostAllowList
from monosemantic.browser.live import MAX_CHARS, MAX_NEW_TOKENS, LiveModel
from monosemantic.browser.run_view import MAX_PAGE, NEURONS, PICTURE_TYPES, NotFound, RunView
from monosemantic.errors import UserError

STATIC_DIR = Path(str(files("monosemantic.browser") / "static"))
log = logging.getLogger(__name__)


class LiveRequest(BaseModel):
    text: str = Field(max_length=MAX_CHARS)
    dictionary: str = Field(max_length=200)


class SteerRequest(BaseModel):
    sae: str = Field(max_length=200)
    feature: int
    value: float
    prompt: str = Field(max_length=MAX_CHARS)
    mode: Literal["clamp", "add", "ablate"] = "clamp"
    n_tokens: int = Field(20, ge=0, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=2**31)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(run_dir: str | Path, allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The browser app over ``run_dir`` (its feature store must exist and its artifacts match
    ``run.json``: ``UserError`` otherwise), answering only to ``allowed_hosts`` (None: any)."""
    view = RunView(run_dir)
    live = LiveModel(run_dir)
    app = FastAPI(title=f"monosemantic — {view.path.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.view, app.state.live = view, live
    app.add_middleware(BodyLimit)
    if allowed_hosts is not None:
        app.add_middleware(HostAllowList, hosts=allowed_hosts)

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.2f}"
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound) -> JSONResponse:
        return _error(404, str(err))

    @app.exception_handler(UserError)
    async def bad_input(request: Request, err: UserError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return _error(422, problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal error (the server log has the details)")

    @app.get("/api/overview")
    def overview() -> JSONResponse:
        return JSONResponse(view.overview())

    @app.get("/api/dicts/{dict_name}/units")
    def units(
        dict_name: str,
        sort: str | None = Query(None, max_length=40),
        order: Literal["asc", "desc"] = "desc",
        offset: int = Query(0, ge=0, le=10**7),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        q: str | None = Query(None, max_length=200),
        token: str | None = Query(None, max_length=100),
        min_density: float = Query(0.0, ge=0, le=1),
        max_density: float = Query(1.0, ge=0, le=1),
        min_score: float | None = Query(None, ge=-1, le=1),
    ) -> JSONResponse:
        sort = sort or ("f1" if token else "simulation_score")  # a token search ranks by F1 unless told otherwise
        return JSONResponse(
            view.unit_list(
                dict_name,
                sort,
                order == "desc",
                offset,
                limit,
                q or None,
                token or None,
                min_density,
                max_density,
                min_score,
            )
        )

    @app.get("/api/saes/{sae}/features/{feature}")
    def feature(sae: str, feature: int) -> JSONResponse:
        if view.dicts.get(sae, {}).get("unit_kind") != "feature":
            raise NotFound(f"unknown SAE {sae!r} (have: {', '.join(n for n in view.dicts if n != NEURONS)})")
        return JSONResponse(view.unit_page(sae, feature))

    @app.get("/api/neurons/{neuron}")
    def neuron(neuron: int) -> JSONResponse:
        return JSONResponse(view.unit_page(NEURONS, neuron))

    @app.get("/api/files/{folder}/{name}")
    def picture(folder: str, name: str) -> FileResponse:
        path = view.picture(f"{folder}/{name}")
        return FileResponse(path, media_type=PICTURE_TYPES[path.suffix])

    @app.post("/api/live")
    def live_text(body: LiveRequest) -> JSONResponse:
        view.dictionary(body.dictionary)
        return JSONResponse(live.activations(body.text, body.dictionary))

    @app.post("/api/steer")
    def steer(body: SteerRequest) -> JSONResponse:
        if view.dicts.get(body.sae, {}).get("unit_kind") != "feature":
            raise NotFound(f"unknown SAE {body.sae!r}")
        view.check_unit(body.sae, body.feature)
        return JSONResponse(
            live.steer(body.sae, body.feature, body.value, body.prompt, body.mode, body.n_tokens, body.seed)
        )

    @app.get("/api/{rest:path}")
    def unknown_api(rest: str) -> JSONResponse:
        return _error(404, f"no API route /api/{rest}")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
