"""The web dashboard served by ``ilm serve`` at ``/`` (server-rendered, no JavaScript build)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ilm.web.dashboard.pages import router, static_dir
from ilm.web.dashboard.session import LoginRequired, login_url

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Add the dashboard's pages, its stylesheet at /static, and the redirect to /login."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(static_dir())), name="static")

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(login_url(exc.next_url), status_code=303)
