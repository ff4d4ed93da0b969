"""The FastAPI application: routes, metrics middleware, the live page and its static file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from eventstore.api import routes_guards, routes_history, routes_ops
from eventstore.api.metrics import build_registry, render
from eventstore.api.state import ApiState
from eventstore.core.settings import Settings

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    """The API for one deployment; the connection pool opens now and closes with the app."""
    api = ApiState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            api.close()

    app = FastAPI(title="eventstore", version="1", lifespan=lifespan,
                  description="History, write map, readiness check, agents and leases of an eventstore "
                              "deployment. Bearer tokens: auditor (read) and operator (also kill, revive, "
                              "release). Create them with `eventstore tokens add NAME --role ROLE`.")
    app.state.api = api
    registry, http = build_registry(api)
    app.middleware("http")(http.middleware)
    app.include_router(routes_history.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_guards.router)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
