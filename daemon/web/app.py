"""Routes of the web page. Each one calls the read layer (``daemon.status``,
``daemon.store``, ``daemon.runinfo``, ``daemon.schedule.report``) and hands what it
got to a template; the only write is the opt-in retry, which is ``scanrelay retry``.
In cluster mode the same calls read the cluster's PostgreSQL through one
``ClusterView`` kept for the page's lifetime: the overview gains a Cluster panel, and
a run's page its host and batches."""

from __future__ import annotations

import asyncio
import mimetypes
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from daemon import status
from daemon.cluster.history import HistoryReader
from daemon.cluster.views import ClusterUnavailable, open_view
from daemon.config import Config
from daemon.errors import RequestError
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.redact import redact
from daemon.runinfo import RunView, failed_requests, load_run, retry_request, run_file
from daemon.schedule.report import schedule_rows
from daemon.store.abc import RequestStore
from daemon.store.records import RunFilter
from daemon.store.sqlite_requests import read_ledger
from daemon.web import fmt
from daemon.web.analysis import analysis_view, colour_css, known_comment
from daemon.web.guard import COOKIE, Guard, Keys

PAGE_SIZE = 50
TAIL_BYTES = 32 * 1024  # of run.log shown live
STATUSES = ("claimed", *(s.value for s in RunStatus))
MAX_TEXT = 200


class Pages:
    def __init__(self, config: Config, keys: Keys) -> None:
        self.config = config
        self.layout = Layout.of(config)
        self.keys = keys
        self.actions = config.web.actions and keys.token is not None
        self._lock = threading.Lock()
        self._history: RequestStore | None = None
        self.cluster = open_view(config)  # None on one host; connects at its first read
        self.env = Environment(loader=PackageLoader("daemon.web", "templates"),
                               autoescape=select_autoescape(default=True))
        fmt.install(self.env)

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(signed_in=self.keys.token is not None,
                                                  csrf=self.keys.csrf, **context)
        return HTMLResponse(html, status_code)

    def login_page(self, next_path: str, error: str | None = None) -> bytes:
        return self.env.get_template("login.html").render(
            next=next_path if _local(next_path) else "/", error=error,
            signed_in=False).encode()

    # --- pages ------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        return self.render("overview.html", page="overview",
                           s=status.collect(self.config, self.cluster))

    def overview_live(self, request: Request) -> Response:
        return self.render("_overview_live.html", s=status.collect(self.config, self.cluster))

    def runs(self, request: Request) -> Response:
        q = request.query_params
        filters = RunFilter(_choice(q, "action", None), _choice(q, "status", STATUSES),
                            _text(q, "q"))
        page = _page(q)
        ledger = self._ledger()
        total = ledger.count(filters) if ledger else 0
        records = ledger.search(filters, PAGE_SIZE, (page - 1) * PAGE_SIZE) if ledger else []
        actions = ledger.actions() if ledger else []
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render("runs.html", page="runs", records=records, total=total,
                           number=page, pages=pages, f=filters, actions=actions,
                           statuses=STATUSES, query=_query(filters))

    def run(self, request: Request) -> Response:
        view = self._view(request)
        text = self._text_file(view.key, "request.json")
        return self.render("run.html", page="runs", v=view, request_text=text,
                           tail=self._tail(view.key), actions=self.actions,
                           retried=_text(request.query_params, "retried"),
                           cluster=self._extras(view.key))

    def run_live(self, request: Request) -> Response:
        view = self._view(request)
        return self.render("_run_live.html", v=view, tail=self._tail(view.key),
                           cluster=self._extras(view.key))

    def analysis(self, request: Request) -> Response:
        view = self._view(request)
        found = view.data.get("analysis")
        if not isinstance(found, dict):
            raise HTTPException(404, "this run has no analysis")
        comment = known_comment(request.query_params.get("comment"))
        data = analysis_view(found, run_file(self.layout, view.key, "analysis.csv"), comment)
        return self.render("analysis.html", page="runs", v=view, a=data, comment=comment)

    def file(self, request: Request) -> Response:
        key, name = request.path_params["key"], request.path_params["name"]
        path = run_file(self.layout, key, name, self._cluster_history())
        if path is None:
            raise HTTPException(404, "no such file")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or name.endswith((".log", ".txt")):
            kind = "text/plain; charset=utf-8"  # never rendered as a page of ours
        return FileResponse(path, media_type=kind, headers={
            "content-disposition": f"attachment; filename=\"{key}-{quote(name)}\""})

    async def retry(self, request: Request) -> Response:
        view = self._view(request)
        form = await request.form()
        if not self.actions or form.get("csrf") != self.keys.csrf:
            raise HTTPException(403, "actions are off (web.actions) or the form is stale")
        try:
            path = retry_request(self.config, view.key, self._cluster_history())
        except (LookupError, RequestError) as exc:
            problems = exc.problems if isinstance(exc, RequestError) else [str(exc.args[0])]
            return self.render("message.html", 409, title="Not retried", lines=problems)
        return RedirectResponse(f"/runs/{view.key}?retried={quote(path.name)}", 303)

    def failed(self, request: Request) -> Response:
        return self.render("failed.html", page="failed", rows=failed_requests(self.layout))

    def schedules(self, request: Request) -> Response:
        return self.render("schedules.html", page="schedules",
                           rows=schedule_rows(self.config, view=self.cluster))

    def login_form(self, request: Request) -> Response:
        return HTMLResponse(self.login_page(request.query_params.get("next", "/")))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        next_path = str(form.get("next") or "/")
        if not self.keys.token_ok(str(form.get("token") or "")):
            await asyncio.sleep(0.5)  # slows guessing
            return HTMLResponse(self.login_page(next_path, "That token is not right."), 401)
        response = RedirectResponse(next_path if _local(next_path) else "/", 303)
        response.set_cookie(COOKIE, self.keys.session or "", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- helpers ----------------------------------------------------------------

    def _ledger(self) -> HistoryReader | RequestStore | None:
        """One read-only connection for the page's lifetime (opening one per request
        costs more than the query); None until the daemon has created the ledger.
        In cluster mode: the cluster's history."""
        if self.cluster is not None:
            return self.cluster.history()
        with self._lock:
            if self._history is None:
                self._history = read_ledger(self.layout.state)
            return self._history

    def _cluster_history(self) -> HistoryReader | None:
        """The history a run is looked up in: None on one host (``runinfo`` reads the
        ledger under ``state/`` then, as it always did)."""
        return self.cluster.history() if self.cluster is not None else None

    def _extras(self, key: str) -> dict[str, Any] | None:
        """Cluster mode: the run's host and batches (``ClusterView.run_extras``)."""
        return self.cluster.run_extras(key) if self.cluster is not None else None

    def _view(self, request: Request) -> RunView:
        view = load_run(self.layout, request.path_params["key"], self._cluster_history())
        if view is None:
            raise HTTPException(404, "no such run")
        return view

    def _text_file(self, key: str, name: str) -> str | None:
        path = run_file(self.layout, key, name)
        return redact(path.read_text(encoding="utf-8", errors="replace")) if path else None

    def _tail(self, key: str) -> str | None:
        path = run_file(self.layout, key, "run.log")
        if path is None:
            return None
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_BYTES))
            data = f.read().decode("utf-8", errors="replace")
        return redact(data.split("\n", 1)[-1] if len(data) >= TAIL_BYTES else data)


def _local(path: str) -> bool:
    """A same-site path (no scheme, no host, no ``//``): safe to redirect to."""
    return path.startswith("/") and not path.startswith(("//", "/\\"))


def _choice(q: Any, key: str, allowed: tuple[str, ...] | None) -> str | None:
    value = q.get(key) or None
    if value is None:
        return None
    if allowed is not None and value not in allowed:
        raise HTTPException(400, f"{key}: {value!r} is not one of {', '.join(allowed)}")
    if len(value) > MAX_TEXT:
        raise HTTPException(400, f"{key}: at most {MAX_TEXT} characters")
    return str(value)


def _text(q: Any, key: str) -> str | None:
    value = (q.get(key) or "").strip()
    if len(value) > MAX_TEXT:
        raise HTTPException(400, f"{key}: at most {MAX_TEXT} characters; shorten the search")
    return value or None


def _page(q: Any) -> int:
    raw = q.get("page") or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise HTTPException(400, f"page: {raw!r} is not a page number; use 1, 2, 3 ...")
    return int(raw)


def _query(filters: RunFilter) -> str:
    """The filters as a query string prefix for paging links."""
    parts = [(k, v) for k, v in (("action", filters.action), ("status", filters.status),
                                 ("q", filters.text)) if v]
    return "".join(f"{k}={quote(v)}&" for k, v in parts)


def create_app(config: Config, token: str | None) -> ASGIApp:
    keys = Keys(token)
    pages = Pages(config, keys)
    static = Path(__file__).with_name("static")
    routes = [
        Route("/", pages.overview),
        Route("/live/overview", pages.overview_live),
        Route("/runs", pages.runs),
        Route("/runs/{key}", pages.run),
        Route("/runs/{key}/live", pages.run_live),
        Route("/runs/{key}/analysis", pages.analysis),
        Route("/runs/{key}/files/{name}", pages.file),
        Route("/runs/{key}/retry", pages.retry, methods=["POST"]),
        Route("/failed", pages.failed),
        Route("/schedules", pages.schedules),
        Route("/colours.css", lambda _: Response(colour_css(), media_type="text/css")),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]

    async def error(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "error")
        return pages.render("message.html", code, title=f"{code}", lines=[str(detail)])

    async def away(request: Request, exc: Exception) -> Response:
        return pages.render("message.html", 503, title="Cluster database away",
                            lines=[str(exc), "The hosts resume when it is back; so does "
                                   "this page."])

    app = Starlette(routes=routes, exception_handlers={HTTPException: error,
                                                       ClusterUnavailable: away})
    return Guard(app, keys, pages.login_page)
