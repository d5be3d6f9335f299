"""The console's HTTP layer: routes, login, CSRF and limits over `ConsoleQueries` and `ManualMigrations`.

Served by hypercorn's trio worker inside `serve`'s nursery. Every store call
goes to a worker thread through one `CapacityLimiter`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailmigrator.domain.use_cases.first_login import RejectionCounts
from mailmigrator.domain.errors import AccountNotFound, DomainError, InvalidLogin
from mailmigrator.domain.logins import normalise_login
from mailmigrator.ops.bulk import parse_bulk
from mailmigrator.ops.config import Config
from mailmigrator.ops.console.auth import (
    ARGON2_CONCURRENCY,
    AdminPassword,
    AdminThrottle,
    Session,
    Sessions,
    admin_throttle,
    csrf_matches,
)
from mailmigrator.ops.console.manual import ManualMigrations, QueueFull, single_entry
from mailmigrator.ops.console.metrics import CONTENT_TYPE, render_metrics
from mailmigrator.ops.console.queries import AccountQuery, BadQuery, ConsoleQueries
from mailmigrator.ops.composition import Migration, OpenStore

log = structlog.get_logger("mailmigrator.console")

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "mm_session"
CSRF_HEADER = "x-csrf-token"
MAX_JSON_BODY = 16 * 1024
MAX_BULK_BODY = 1024 * 1024
MAX_LOG_TAIL = 2000
LOG_PAGE, MAX_LOG_PAGE = 500, 5000
THROTTLE_RETRY_AFTER = 300

_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class HttpError(Exception):
    """An answer other than success; `message` is the one line the client is shown."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Console:
    """Everything the routes need: the read side, the manual queue and the admin's login state."""

    config: Config
    queries: ConsoleQueries
    manual: ManualMigrations
    admin_password: AdminPassword
    secure_cookies: bool = False
    sessions: Sessions = field(default_factory=Sessions)
    throttle: AdminThrottle = field(default_factory=admin_throttle)
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    rejections: RejectionCounts = field(default_factory=RejectionCounts)
    argon2_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(ARGON2_CONCURRENCY))

    async def store(self, fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    def login_of(self, raw: str) -> str:
        try:
            return normalise_login(raw, self.config.migration.primary_domain)
        except InvalidLogin as e:
            raise HttpError(400, f"{e}; give the login as user@domain") from None

    async def check_admin_password(self, client: str, password: str) -> None:
        attempt = await self.throttle.begin(client)
        if isinstance(attempt, str):
            raise HttpError(429, f"too many wrong admin passwords; wait {THROTTLE_RETRY_AFTER // 60} minutes",
                            {"Retry-After": str(THROTTLE_RETRY_AFTER)})
        try:
            # argon2 is slow on purpose: off the event loop, a few at a time.
            right = await trio.to_thread.run_sync(self.admin_password.matches, password, limiter=self.argon2_limiter)
        except BaseException:
            attempt.release()
            raise
        if not right:
            attempt.failed()
            log.warning("wrong admin password", client=client)
            raise HttpError(401, "wrong admin password")
        attempt.succeeded()
        self.throttle.logged_in(client)


Handler = Callable[[Console, Request], Awaitable[Response]]


def build_console(
    config: Config, wired: OpenStore, admin_password: AdminPassword, *,
    manual: ManualMigrations | None = None, sessions: Sessions | None = None,
    throttle: AdminThrottle | None = None, secure_cookies: bool = False,
    rejections: RejectionCounts | None = None,
) -> tuple[ASGIApp, Console]:
    """The ASGI app and its state; run `console.manual.run` beside it for manual migrations."""
    console = Console(
        config, ConsoleQueries(config, wired), manual or ManualMigrations(config, wired), admin_password,
        secure_cookies, sessions or Sessions(), throttle or admin_throttle(), rejections=rejections or RejectionCounts(),
    )

    def route(path: str, handler: Handler, methods: list[str], *, auth: bool = True, csrf: bool = True) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                if auth:
                    session = await _authenticate(console, request)
                    if csrf and request.method == "POST" and session is not None:
                        if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
                            raise HttpError(403, "missing or wrong CSRF token: send the X-CSRF-Token header "
                                                 "that /api/login or /api/session gave")
                return await handler(console, request)
            except HttpError as e:
                return JSONResponse({"error": e.message}, e.status, headers=e.headers)
            except Exception:
                # One request fails, with its traceback in the service log; the console keeps serving.
                log.exception("console request failed", path=request.url.path, method=request.method)
                return JSONResponse({"error": "the request failed inside the service; its log has the details"}, 500)

        return Route(path, endpoint, methods=methods)

    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        route("/api/login", login, ["POST"], auth=False),
        route("/api/logout", logout, ["POST"], auth=False),
        route("/api/session", session_info, ["GET"]),
        route("/api/general", general, ["GET"]),
        route("/api/run", run_state, ["GET"]),
        route("/api/run/{button:str}", press, ["POST"]),
        route("/api/accounts", accounts, ["GET"]),
        route("/api/accounts/{login:str}", account, ["GET"]),
        route("/api/accounts/{login:str}/history", history, ["GET"]),
        route("/api/log", log_tail, ["GET"]),
        route("/api/report", report, ["GET"]),
        route("/api/manual/migrate", manual_migrate, ["POST"]),
        route("/api/manual/bulk", manual_bulk, ["POST"]),
        route("/api/manual/jobs", manual_jobs, ["GET"]),
        route("/metrics", metrics, ["GET"]),
    ]
    app = Starlette(routes=routes)
    return SecurityHeaders(app), console


class SecurityHeaders:
    """Adds the console's fixed security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


async def _authenticate(console: Console, request: Request) -> Session | None:
    """The request's session; None for a scrape with HTTP Basic; else 401."""
    session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        return session
    header = request.headers.get("authorization", "")
    if request.url.path == "/metrics" and header.lower().startswith("basic "):
        try:
            _, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise HttpError(400, "malformed Authorization header; use HTTP Basic with the admin password") from None
        await console.check_admin_password(_client(request), password)
        return None
    raise HttpError(401, "log in first: POST /api/login with the admin password")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body of {int(declared):,} bytes is larger than the limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HttpError(415, "send the body as JSON with Content-Type: application/json")
    body = await _read_body(request, MAX_JSON_BODY)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HttpError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a JSON object")
    return data


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise HttpError(400, f"field {name!r} is missing or empty; send it as a non-empty string")
    return value


# Handlers


async def login(console: Console, request: Request) -> Response:
    password = _string_field(await _json_body(request), "password")
    await console.check_admin_password(_client(request), password)
    session = console.sessions.open()
    log.info("admin logged in", client=_client(request))
    response = JSONResponse({"csrf_token": session.csrf_token})
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="strict",
                        secure=console.secure_cookies, path="/")
    return response


async def logout(console: Console, request: Request) -> Response:
    console.sessions.close(request.cookies.get(SESSION_COOKIE))
    response = JSONResponse({"logged_out": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def session_info(console: Console, request: Request) -> Response:
    session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
    assert session is not None
    return JSONResponse({"csrf_token": session.csrf_token})


async def general(console: Console, request: Request) -> Response:
    return JSONResponse(console.queries.general())


async def run_state(console: Console, request: Request) -> Response:
    return JSONResponse(await console.store(console.queries.run))


async def press(console: Console, request: Request) -> Response:
    button = request.path_params["button"]
    if button not in ("start", "stop", "finish"):
        raise HttpError(404, f"no button {button!r}; use /api/run/start, /api/run/stop or /api/run/finish")
    try:
        result = await console.store(lambda: console.queries.press(button, "console"))
    except DomainError as e:
        raise HttpError(409, str(e)) from None
    log.info("run button pressed", button=button, changed=result["changed"], client=_client(request))
    return JSONResponse(result)


async def accounts(console: Console, request: Request) -> Response:
    try:
        query = AccountQuery.parse(dict(request.query_params))
    except BadQuery as e:
        raise HttpError(400, str(e)) from None
    return JSONResponse(await console.store(lambda: console.queries.accounts(query)))


async def account(console: Console, request: Request) -> Response:
    login_name = console.login_of(request.path_params["login"])
    doc = await console.store(lambda: console.queries.account(login_name))
    if doc is None:
        raise HttpError(404, f"no account {login_name!r} is recorded; /api/accounts lists them")
    return JSONResponse(doc)


async def history(console: Console, request: Request) -> Response:
    login_name = console.login_of(request.path_params["login"])
    try:
        rows = await console.store(lambda: console.queries.history(login_name))
    except AccountNotFound:
        raise HttpError(404, f"no account {login_name!r} is recorded; /api/accounts lists them") from None
    return JSONResponse({"login": login_name, "events": rows})


REPORT_MEDIA = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
                "json": "application/json"}


async def report(console: Console, request: Request) -> Response:
    fmt = request.query_params.get("format", "html")
    if fmt not in REPORT_MEDIA:
        raise HttpError(400, f"format={fmt!r} is not one of html, csv, json")
    text = await console.store(lambda: console.queries.report(fmt))
    disposition = "inline" if fmt == "html" else f'attachment; filename="mailmigrator-report.{fmt}"'
    return Response(text, media_type=REPORT_MEDIA[fmt], headers={"Content-Disposition": disposition})


async def log_tail(console: Console, request: Request) -> Response:
    params = dict(request.query_params)
    try:
        after = _optional_count(params, "after")
        tail = _optional_count(params, "tail")
        limit = _optional_count(params, "limit")
    except BadQuery as e:
        raise HttpError(400, str(e)) from None
    if tail is not None and not 1 <= tail <= MAX_LOG_TAIL:
        raise HttpError(400, f"tail={tail} is out of range; ask for 1 to {MAX_LOG_TAIL} lines")
    if limit is not None and not 1 <= limit <= MAX_LOG_PAGE:
        raise HttpError(400, f"limit={limit} is out of range; ask for 1 to {MAX_LOG_PAGE} lines, then continue at `next`")
    return JSONResponse(await console.store(lambda: console.queries.log(after, tail or 200, limit or LOG_PAGE)))


def _optional_count(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BadQuery(f"{name}={raw!r} is not a whole number; send digits, e.g. {name}=0")
    return int(raw)


async def manual_migrate(console: Console, request: Request) -> Response:
    data = await _json_body(request)
    raw_login, password = _string_field(data, "login"), _string_field(data, "password")
    domain = data.get("domain") or console.config.migration.primary_domain
    if not isinstance(domain, str):
        raise HttpError(400, "field 'domain' must be a string")
    try:
        login_name = normalise_login(raw_login, domain)
    except InvalidLogin as e:
        raise HttpError(400, f"{e}; give the login as user@domain") from None
    try:
        job = console.manual.submit("single", [single_entry(login_name, password)], [])
    except QueueFull as e:
        raise HttpError(503, str(e)) from None
    return JSONResponse(job.to_json(), 202)


async def manual_bulk(console: Console, request: Request) -> Response:
    body = await _read_body(request, MAX_BULK_BODY)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "the bulk file is not UTF-8 text") from None
    entries, problems = parse_bulk(text, console.config.migration.primary_domain)
    if not entries:
        detail = f" ({problems[0]})" if problems else ""
        raise HttpError(400, f"the bulk file has no valid user:password line{detail}")
    try:
        job = console.manual.submit("bulk", entries, problems)
    except QueueFull as e:
        raise HttpError(503, str(e)) from None
    return JSONResponse(job.to_json(), 202)


async def manual_jobs(console: Console, request: Request) -> Response:
    jobs = sorted(console.manual.jobs.values(), key=lambda j: j.id, reverse=True)
    return JSONResponse({"jobs": [job.to_json() for job in jobs]})


async def metrics(console: Console, request: Request) -> Response:
    def read() -> str:
        snap = console.queries.snapshot()
        message_rate, byte_rate = console.queries.rate.rates()
        return render_metrics(snap, message_rate, byte_rate, console.rejections.unrecorded)

    return Response(await console.store(read), media_type=CONTENT_TYPE)


# Running under serve


def hypercorn_config(config: Config) -> HypercornConfig:
    admin = config.admin
    hc = HypercornConfig()
    hc.bind = [str(endpoint) for endpoint in admin.listen]
    if admin.tls_cert and admin.tls_key:
        hc.certfile = str(admin.tls_cert)
        hc.keyfile = str(admin.tls_key)
    hc.accesslog = None  # request lines are not needed; bodies are never logged
    hc.graceful_timeout = 2.0
    return hc


async def run_console(
    config: Config, wired: OpenStore, *, rejections: RejectionCounts | None = None,
    migration: Migration | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console on `[admin] listen` until cancelled; reports the bound URLs (empty when disabled)."""
    admin = config.admin
    if admin.password_file is None or not admin.listen:
        log.warning("admin console disabled: set [admin] password_file "
                    "(write it with `mailmigrator admin-password FILE`) and [admin] listen")
        task_status.started([])
        return
    admin_password = await trio.to_thread.run_sync(AdminPassword.from_file, admin.password_file)
    secure = bool(admin.tls_cert and admin.tls_key)
    app, console = build_console(config, wired, admin_password, secure_cookies=secure, rejections=rejections,
                                 manual=ManualMigrations(config, wired, migration))
    async with trio.open_nursery() as nursery:
        await nursery.start(console.manual.run)
        # Starlette's ASGI types and hypercorn's describe the same protocol in different words.
        serve_app = partial(hypercorn_serve, app, hypercorn_config(config), mode="asgi")  # type: ignore[arg-type]
        binds = await nursery.start(serve_app)
        log.info("admin console ready", urls=binds)
        task_status.started(binds)
