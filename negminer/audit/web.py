"""The review page: one flagged pair at a time, decided with buttons or keyboard shortcuts.

``negminer audit serve`` runs :func:`create_app` under uvicorn. Pages are Jinja2 templates
with autoescaping on; the score plot is inline SVG laid out by :mod:`negminer.audit.plot`.
Every input is validated (query parameters by pattern, the decision form by a pydantic
model) and reaches SQL only as bound parameters. A decision is a plain HTML form POST carrying
a per-process CSRF token; JavaScript only adds the keyboard shortcuts.

Access: the server binds to 127.0.0.1 by default. With a token (required to bind anywhere
else), every request must carry it: ``Authorization: Bearer TOKEN``, the ``negminer_token``
cookie, or ``?token=TOKEN`` once (which sets the cookie). The ``Host`` header must name the
bound host, a loopback name (``localhost``, ``127.0.0.1``, ``::1``) or an ``allowed_hosts``
entry (any name on a wildcard bind with a token): a page on another site whose name an attacker
re-points at 127.0.0.1 (DNS rebinding) reaches the socket but is refused, so it can neither
read the page nor post decisions.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from negminer.audit import queries
from negminer.audit.db import DECISIONS
from negminer.audit.plot import score_plot
from negminer.errors import ConfigError, NegminerError

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "negminer_token"
REVIEWER_COOKIE = "negminer_reviewer"
MAX_FORM_BYTES = 16_384
QUEUE_LENGTH = 12
SHORTCUTS = {"is_positive": "p", "is_negative": "n", "drop_pair": "d", "skip": "s"}
LABELS = {
    "is_positive": "Relevant (positive)",
    "is_negative": "Not relevant (negative)",
    "drop_pair": "Drop pair",
    "skip": "Skip",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_HOST_HEADER = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::\d{1,5})?")
_STATIC = {"review.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}

DatasetParam = Annotated[str | None, Query(pattern=queries.DATASET_RE.pattern, max_length=200)]
VersionParam = Annotated[str | None, Query(pattern=queries.VERSION_RE.pattern)]
KindParam = Annotated[str | None, Query(pattern=r"^$|" + queries.KIND_RE.pattern)]


class DecisionForm(BaseModel):
    """The review form as posted; free text is cleaned by :func:`queries.record_decision`."""

    model_config = ConfigDict(extra="forbid", str_max_length=queries.MAX_COMMENT)

    pair_id: int = Field(ge=1)
    # The pair the page showed: refused if pair_id names another one by now (a reloaded version).
    anchor_id: str = Field(min_length=1)
    doc_id: str = Field(min_length=1)
    decision: Literal["is_positive", "is_negative", "drop_pair", "skip"]
    reviewer: str = Field(max_length=queries.MAX_REVIEWER)
    comment: str = ""
    csrf: str = Field(max_length=200)
    dataset: str = Field(pattern=queries.DATASET_RE.pattern)
    version: str = Field(pattern=queries.VERSION_RE.pattern)
    kind: str = Field("", pattern=r"^$|" + queries.KIND_RE.pattern)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token (and refuse weak tokens)."""
    if token is not None and len(token) < 16:
        raise ConfigError("the audit token must be at least 16 characters")
    if not is_loopback(host) and not token:
        raise ConfigError(f"binding the review page to {host} needs --token (or NEGMINER_AUDIT_TOKEN)")


def host_names(host: str, *, token: str | None = None, allowed_hosts: Iterable[str] = ()) -> frozenset[str] | None:
    """The names a request's ``Host`` header may carry when the server binds to `host`.

    Loopback names, `host` and `allowed_hosts`, canonical (lowercase, IPv6 without brackets).
    None (any name) for a wildcard bind (0.0.0.0, ::) with a token and no `allowed_hosts`:
    the machine answers to names the server cannot know, and the token already keeps out
    pages of other sites (their requests carry neither it nor its cookie).
    """
    allowed = [_canonical(name) for name in allowed_hosts]
    if token and not allowed and _is_unspecified(host):
        return None
    return frozenset([*map(_canonical, LOOPBACK_NAMES), _canonical(host), *allowed])


def host_of(header: str) -> str | None:
    """The host name of a ``Host`` header, canonical and without the port; None if malformed."""
    match = _HOST_HEADER.fullmatch(header)
    return _canonical(match["ipv6"] or match["name"]) if match else None


def _canonical(name: str) -> str:
    name = name.strip().strip("[]").lower()
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    root: str | Path | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The FastAPI app of the review page over the audit database `engine`.

    Args:
        engine: the audit database (:func:`negminer.audit.db.open_db`).
        token: when set, every request must present it (see the module docstring).
        root: a datasets root to load newly flagged versions from when the index is opened.
        host: the address the server binds to; requests must name it or a loopback name.
        allowed_hosts: further names the page is opened by (e.g. the machine's DNS name).

    Example:
        >>> uvicorn.run(create_app(open_db(default_url("datasets"))), host="127.0.0.1")  # doctest: +SKIP
    """
    import jinja2

    app = FastAPI(title="negminer audit", docs_url=None, redoc_url=None, openapi_url=None)
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("negminer.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["num"] = format_number
    state = _State(
        engine=engine,
        token=token,
        root=Path(root) if root else None,
        csrf=secrets.token_urlsafe(32),
        hosts=host_names(host, token=token, allowed_hosts=allowed_hosts),
    )

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        denied = state.check_host(request) or state.check_token(request)
        if denied is not None:
            return denied
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            return PlainTextResponse("not found", status_code=404)
        body = resources.files("negminer.audit").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name])

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        state.sync()
        rows = [
            {"version": v, "progress": queries.progress(engine, queries.Filters(dataset=v.dataset, version=v.version))}
            for v in queries.loaded_versions(engine)
        ]
        return HTMLResponse(templates.get_template("index.html").render(rows=rows))

    @app.get("/review", response_class=HTMLResponse)
    def review(
        request: Request,
        dataset: DatasetParam = None,
        version: VersionParam = None,
        kind: KindParam = None,
        pair: Annotated[int | None, Query(ge=1)] = None,
    ) -> Response:
        context = _review_context(engine, dataset=dataset, version=version, kind=kind or None, pair_id=pair)
        if context is None:
            return RedirectResponse("/", status_code=303)
        reviewer = unquote(request.cookies.get(REVIEWER_COOKIE, ""))[: queries.MAX_REVIEWER]
        html = templates.get_template("review.html").render(
            **context, reviewer=reviewer, csrf=state.csrf, shortcuts=SHORTCUTS, labels=LABELS, decisions=DECISIONS
        )
        return HTMLResponse(html)

    @app.post("/review/decide")
    async def decide(request: Request) -> Response:
        body = await request.body()
        try:
            form = _parse_form(body)
            if not _same(form.csrf, state.csrf):
                return _error(templates, 403, "The form is stale or forged: reload the page and decide again.")
            await run_in_threadpool(  # SQLite may wait for another writer: keep the event loop free
                queries.record_decision,
                engine,
                form.pair_id,
                form.decision,
                reviewer=form.reviewer,
                comment=form.comment,
                dataset=form.dataset,
                version=form.version,
                anchor_id=form.anchor_id,
                doc_id=form.doc_id,
            )
        except (ValidationError, NegminerError) as err:
            return _error(templates, 400, _message(err))
        where = {"dataset": form.dataset, "version": form.version, "kind": form.kind}
        target = "/review?" + urlencode({key: value for key, value in where.items() if value})
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            REVIEWER_COOKIE, quote(form.reviewer.strip(), safe=""), max_age=30 * 86400, httponly=True, samesite="strict"
        )
        return response

    return app


class _State:
    """Per-app settings shared by the routes and the guard middleware."""

    def __init__(
        self, *, engine: Engine, token: str | None, root: Path | None, csrf: str, hosts: frozenset[str] | None
    ) -> None:
        self.engine, self.token, self.root, self.csrf, self.hosts = engine, token, root, csrf, hosts

    def check_host(self, request: Request) -> Response | None:
        """None when the ``Host`` header names this server, else a 400 (DNS rebinding guard)."""
        header = request.headers.get("host", "")
        if self.hosts is None or host_of(header) in self.hosts:
            return None
        message = (
            f"this page is not served as host {header!r}: open it as {' or '.join(sorted(self.hosts))}, "
            "or start the server with --allowed-host NAME for another name"
        )
        return PlainTextResponse(message, status_code=400, headers=SECURITY_HEADERS)

    def check_token(self, request: Request) -> Response | None:
        """None when the request may proceed, else the response that refuses or redirects it."""
        if not self.token:
            return None
        header = request.headers.get("authorization", "")
        presented = [header[7:] if header.lower().startswith("bearer ") else "", request.cookies.get(TOKEN_COOKIE, "")]
        if any(p and _same(p, self.token) for p in presented):
            return None
        query_token = request.query_params.get("token", "")
        if request.method == "GET" and query_token and _same(query_token, self.token):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        return PlainTextResponse("a valid token is required", status_code=401, headers=SECURITY_HEADERS)

    def sync(self) -> None:
        """Load versions flagged since the server started (errors are logged, not fatal)."""
        if self.root is None:
            return
        from negminer.audit.loader import sync_root

        try:
            sync_root(self.engine, self.root)
        except NegminerError as err:
            logger.warning("could not load new flagged versions from %s: %s", self.root, err)


def format_number(value: Any, digits: int = 3, *, signed: bool = False) -> str:
    """A score for display: fixed decimals, an en dash for missing values."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (compared as UTF-8)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _parse_form(body: bytes) -> DecisionForm:
    """Validate an urlencoded form body (one value per field, bounded size)."""
    if len(body) > MAX_FORM_BYTES:
        raise ConfigError(f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"malformed form: {err}") from err
    if any(len(values) != 1 for values in fields.values()):
        raise ConfigError("each form field must appear once")
    return DecisionForm.model_validate({key: values[0] for key, values in fields.items()})


def _message(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in err.errors())
    return str(err)


def _error(templates: Any, status: int, message: str) -> HTMLResponse:
    return HTMLResponse(templates.get_template("error.html").render(message=message), status_code=status)


def _review_context(
    engine: Engine, *, dataset: str | None, version: str | None, kind: str | None, pair_id: int | None
) -> dict[str, Any] | None:
    """What review.html shows: the pair, the queue, progress and the plot; None if nothing loaded."""
    versions = queries.loaded_versions(engine, dataset)
    if version is not None:
        versions = [v for v in versions if v.version == version]
    if not versions:
        return None
    loaded = versions[-1]
    filters = queries.Filters(dataset=loaded.dataset, version=loaded.version, kind=kind)
    queue = queries.list_pairs(engine, queries.Filters(**{**filters.__dict__, "status": "pending"}), limit=QUEUE_LENGTH)
    view = queries.get_pair(engine, pair_id) if pair_id is not None else (queue[0] if queue else None)
    if view is not None and (view.pair.dataset, view.pair.version) != (loaded.dataset, loaded.version):
        view = None
    return {
        "loaded": loaded,
        "kind": kind or "",
        "kinds": queries.kinds(engine, loaded.dataset, loaded.version),
        "view": view,
        "history": queries.history(engine, view.pair.dataset, view.pair.anchor_id, view.pair.doc_id) if view else [],
        "queue": queue,
        "progress": queries.progress(engine, filters),
        "plot": score_plot(loaded.histogram, marker=view.pair.score if view else None),
    }
