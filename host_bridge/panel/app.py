"""The panel's ASGI app (Starlette): the page, a JSON API and server-sent events.

Routes (``{job}`` is a job id, URL-encoded):

- ``GET /``, ``GET /static/panel.js|panel.css``: the page, from package data;
- ``GET /api/jobs?state=&page=&per_page=&q=``: one page of the list
  (:meth:`host_bridge.panel.board.JobBoard.page`);
- ``GET /api/events?since=VERSION``: server-sent events, one ``jobs`` event per
  change of the list (:meth:`~host_bridge.panel.board.JobBoard.changes_since`);
- ``GET /api/jobs/{job}``: one job's details;
- ``GET /api/jobs/{job}/outputs/{key}``, ``.../frames/{index}``,
  ``.../variants/{row}/frames/{index}``: a file its ``Result/1`` lists
  (:mod:`host_bridge.panel.files`), with single byte ranges (movies seek);
- ``POST /api/jobs/{job}/cancel|retry|archive|pick``: the actions
  (:mod:`host_bridge.panel.actions`), JSON in and out;
- ``GET /api/session``: given the token, the cookie that lets links and images
  read on a panel that listens beyond the loopback interface;
- ``GET /api/health``: who this is (the launcher checks it).

Every request passes :class:`_Guarded` first (:mod:`host_bridge.panel.security`).
Blocking file-system work runs in Starlette's thread pool (plain ``def``
endpoints); a background thread polls the exchange twice a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fsexchange.errors import (DocumentError, EditError, FaceStitchError, JobNotFound,
                               JobStateError)
from fsexchange.exchange import Exchange

from host_bridge.panel import actions
from host_bridge.panel.board import JobBoard, job_detail, read_json_limited
from host_bridge.panel.files import JobFile, NotListed, open_job_file, read_job_file
from host_bridge.panel.security import TOKEN_COOKIE, Guard

__all__ = ["create_app", "PAGE_CSP", "FILE_CSP"]

log = logging.getLogger(__name__)

#: The page runs only its own script and style and talks only to its server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data:; media-src 'self'; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
#: A job's files (report.html above all) open in a sandbox of their own: no
#: script runs, and nothing they hold can reach the page's origin or its token.
FILE_CSP = ("sandbox; default-src 'none'; img-src data: 'self'; "
            "media-src 'self'; style-src 'unsafe-inline'")
_STATIC = {"panel.js": "text/javascript; charset=utf-8",
           "panel.css": "text/css; charset=utf-8"}
_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TICK = 0.25  # seconds between looks at the board in an event stream
_PING = 15.0  # seconds of silence before a comment keeps the stream open
MAX_PER_PAGE = 5000


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}},
                        status_code=status)


def _from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, NotListed):
        return _error(404, "not_listed", str(exc))
    if isinstance(exc, FaceStitchError):
        status = 404 if isinstance(exc, JobNotFound) else \
            409 if isinstance(exc, JobStateError) else \
            422 if isinstance(exc, (DocumentError, EditError)) else 500
        return _error(status, exc.code, exc.message)
    return _error(400, "request.invalid", str(exc))


class _Guarded:
    """Pure ASGI middleware: the Host check, the token and origin checks, and the
    security headers on every response (server-sent events pass through it
    unbuffered)."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"),
                         (b"cross-origin-resource-policy", b"same-origin")]
                if b"content-security-policy" not in present:
                    extra.append((b"content-security-policy", PAGE_CSP.encode()))
                if api and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in extra if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: dict, headers: dict[str, str]) -> Response | None:
        g = self.guard
        if not g.host_ok(headers.get("host")):
            return _error(421, "request.host", "this panel answers only to "
                          f"127.0.0.1:{g.port} and localhost:{g.port}")
        if not scope["path"].startswith("/api/"):
            return None
        if scope["method"] not in ("GET", "HEAD"):
            why = g.write_refusal(headers)
            if why is not None:
                return _error(403, "request.forbidden", why)
            if headers.get("content-type", "").split(";")[0].strip() != \
                    "application/json":
                return _error(415, "request.invalid", "send JSON "
                              "(Content-Type: application/json)")
            return None
        cookies = {}
        if headers.get("cookie"):
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(Exception):
                jar.load(headers["cookie"])
            cookies = {k: m.value for k, m in jar.items()}
        query = {k: v[0] for k, v in
                 parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        if not g.may_read(headers, cookies, query):
            return _error(401, "request.token", "this panel needs its token: open "
                          "it with the URL that 'facestitch panel' printed")
        return None


def _static(name: str) -> bytes:
    return resources.files("host_bridge.panel").joinpath("static", name).read_bytes()


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    n = int(value)  # ValueError -> 400
    return max(lo, min(hi, n))


def _file_response(request: Request, f: JobFile) -> Response:
    """The open file, whole or one byte range (a ``<video>`` seeks by ranges)."""
    size, start, end = f.size, 0, f.size - 1
    status = 200
    m = _RANGE.match(request.headers.get("range", "").strip())
    if m and size > 0 and (m.group(1) or m.group(2)):
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # the last N bytes
            start = max(0, size - int(m.group(2)))
        if start > end or start >= size:
            f.fh.close()
            return Response(status_code=416,
                            headers={"content-range": f"bytes */{size}"})
        status = 206
    length = end - start + 1 if size else 0
    headers = {"content-length": str(length), "accept-ranges": "bytes",
               "content-security-policy": FILE_CSP,
               "content-disposition": f"inline; filename*=UTF-8''"
                                      f"{quote(f.name, safe='')}",
               "cache-control": "private, max-age=60"}
    if status == 206:
        headers["content-range"] = f"bytes {start}-{end}/{size}"

    def body() -> Iterator[bytes]:
        with f.fh:
            f.fh.seek(start)
            left = length
            while left > 0:
                chunk = f.fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    return StreamingResponse(body(), status_code=status, media_type=f.media_type,
                             headers=headers)


def create_app(exchange: str | os.PathLike[str], guard: Guard, *,
               archive: Path | None = None, poll: float = 0.5,
               board: JobBoard | None = None,
               stopping: Callable[[], bool] = lambda: False,
               on_stop: Callable[[], None] | None = None) -> Any:
    """The panel for one exchange.

    Args:
        guard: the token and address checks.
        archive: where "remove from the list" moves finished jobs (default
            ``<exchange>/archive``).
        poll: seconds between looks at the exchange.
        board: a board to serve (default: a new one, read once now).
        stopping: true once the server shuts down (event streams then end).
        on_stop: called when the server has stopped serving (uvicorn re-raises
            SIGTERM after its shutdown, so code after ``run`` may never run).

    Returns:
        The ASGI app (Starlette inside the guard); ``.board`` is the board.
    """
    ex = Exchange(exchange)
    archive_dir = Path(archive) if archive else actions.default_archive(ex.root)
    if board is None:
        board = JobBoard(ex)
        board.refresh(full=True)
    stop = threading.Event()

    def poller() -> None:
        while not stop.wait(poll):
            try:
                board.refresh()
            except Exception:  # noqa: BLE001 - the panel keeps serving
                log.exception("panel: refreshing the job list failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        thread = threading.Thread(target=poller, name="panel-poller", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5.0)
            if on_stop is not None:
                on_stop()

    def page(request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _error(404, "not_found", "no such file")
        return Response(_static(name), media_type=_STATIC[name],
                        headers={"cache-control": "no-cache"})

    def health(request: Request) -> Response:
        return JSONResponse({"app": "facestitch-panel", "pid": os.getpid(),
                             "exchange": str(ex.root), "version": board.version})

    def session(request: Request) -> Response:
        if not guard.token_given(request.headers, {}, {}):
            return _error(401, "request.token", "no valid token in the request")
        resp = JSONResponse({"ok": True})
        resp.set_cookie(TOKEN_COOKIE, guard.token, httponly=True, samesite="strict",
                        path="/")
        return resp

    def jobs(request: Request) -> Response:
        q = request.query_params
        try:
            return JSONResponse(board.page(
                q.get("state", "all"), _int(q.get("page"), 1, 1, 1 << 30),
                _int(q.get("per_page"), 50, 1, MAX_PER_PAGE), q.get("q", "")[:200]))
        except ValueError as exc:
            return _error(400, "request.invalid", str(exc))

    async def events(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "-1"))
        except ValueError:
            return _error(400, "request.invalid", "since must be a number")

        async def stream() -> AsyncIterator[str]:
            last, quiet = since, 0.0
            yield "retry: 1000\n\n"
            while not stopping() and not stop.is_set():
                if board.version != last:
                    payload = board.changes_since(last)
                    last = payload["version"]
                    yield (f"event: jobs\ndata: "
                           f"{json.dumps(payload, separators=(',', ':'))}\n\n")
                    quiet = 0.0
                elif quiet >= _PING:
                    yield ": ping\n\n"
                    quiet = 0.0
                await asyncio.sleep(_TICK)
                quiet += _TICK

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    def read_layout(job_id: str) -> Any:
        return read_json_limited(read_job_file(ex, job_id, "outputs", "sheet_layout"))

    def detail(request: Request) -> Response:
        try:
            return JSONResponse(job_detail(ex, request.path_params["job"],
                                           read_layout=read_layout))
        except (FaceStitchError, ValueError) as exc:
            return _from_exception(exc)

    def job_file(request: Request) -> Response:
        p = request.path_params
        try:
            if "row" in p:
                f = open_job_file(ex, p["job"], "variants", p["index"], row=p["row"])
            elif "key" in p:
                f = open_job_file(ex, p["job"], "outputs", p["key"])
            else:
                f = open_job_file(ex, p["job"], "frames", p["index"])
        except (FaceStitchError, NotListed) as exc:
            return _from_exception(exc)
        return _file_response(request, f)

    async def action(request: Request) -> Response:
        job_id, what = request.path_params["job"], request.path_params["action"]
        if what not in ("cancel", "retry", "archive", "pick"):
            return _error(404, "not_found", f"no action {what!r}")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request.invalid", "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "request.invalid", "the body must be a JSON object")

        def run() -> dict[str, Any]:
            if what == "cancel":
                st = actions.cancel(ex, job_id)
                return {"id": job_id, "state": st.state}
            if what == "retry":
                return {"id": job_id, "new_job": actions.retry(ex, job_id)}
            if what == "archive":
                dest = actions.archive(ex, job_id, archive_dir)
                return {"id": job_id, "archived": str(dest)}
            row = body.get("row")
            if isinstance(row, bool) or not isinstance(row, int):
                raise ValueError("pick needs {\"row\": N}")
            return {"id": job_id, "new_job": actions.pick_strength(ex, job_id, row)}

        try:
            out = await run_in_threadpool(run)
        except (FaceStitchError, ValueError) as exc:
            return _from_exception(exc)
        log.info("panel: %s %s -> %s", what, job_id, out)
        await run_in_threadpool(board.refresh)  # the page sees it at once
        return JSONResponse(out)

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/health", health),
        Route("/api/session", session),
        Route("/api/jobs", jobs),
        Route("/api/events", events),
        Route("/api/jobs/{job}", detail),
        Route("/api/jobs/{job}/outputs/{key}", job_file),
        Route("/api/jobs/{job}/frames/{index}", job_file),
        Route("/api/jobs/{job}/variants/{row}/frames/{index}", job_file),
        Route("/api/jobs/{job}/{action:str}", action, methods=["POST"]),
    ]
    guarded = _Guarded(Starlette(routes=routes, lifespan=lifespan), guard)
    guarded.board = board  # type: ignore[attr-defined]
    return guarded
