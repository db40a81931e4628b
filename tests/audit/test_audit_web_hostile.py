"""Hostile requests against every route of the review app (hypothesis, FastAPI's test client).

Requests are drawn for each route the app declares (read from ``app.routes``, so a new endpoint
is fuzzed without editing this file): arbitrary path segments, query parameters, headers (Host,
Cookie, Authorization, Content-Type, ...), methods and bodies (decision forms with fields
replaced, dropped or repeated, and raw bytes), over a real SQLite audit database loaded from the
version conftest.py builds. Four properties:

1. no answer is a server error (5xx, or an exception escaping the app);
2. reviewer text is stored as typed (after :func:`queries.clean_text`) and every page showing it
   shows it escaped; no HTML answer ever carries a planted markup marker unescaped;
3. no decision is stored unless the request carried the page's CSRF token;
4. on a non-loopback bind (which needs a token), nothing answers below 400 without the token.

Runs are derandomized so the suite is deterministic; set ``NEGMINER_FUZZ_EXAMPLES`` (e.g. 2000)
to explore with a fresh random seed and more examples.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlencode

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session
from starlette.routing import Route

from negminer.audit.db import DECISIONS, Decision
from negminer.audit.loader import load_version
from negminer.audit.queries import (
    MAX_COMMENT,
    MAX_REVIEWER,
    Filters,
    clean_text,
    get_pair,
    is_valid_id,
    list_pairs,
    record_decision,
)
from negminer.audit.web import create_app
from negminer.errors import InputError

DATASET = "scifact-audit"  # the dataset conftest.py builds
VERSION = "v0001"
TOKEN = "t0ken-for-tests-0123456789"
EXAMPLES = int(os.environ.get("NEGMINER_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="NEGMINER_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
FORM_TYPE = "application/x-www-form-urlencoded"

# Pieces of hostile text; RAW_MARKERS are what any of them looks like when rendered unescaped.
MARKUP = (
    "<script>xss(1)</script>",
    '"><img src=x onerror=xss(1)>',
    "' onmouseover='xss(1)",
    '" onfocus="xss(1)',
    "</q></li><xss>",
    "&lt;xss&gt;",
    "{{ 7 * 7 }}{% raw %}",
    "javascript:xss(1)",
    "%3Cxss%3E",
    "\u202e<xss>",
)
RAW_MARKERS = ("<xss", "<script>xss", "<img src=x", "' onmouseover=", '" onfocus=')
ODD_VALUES = ("", " ", "0", "-1", "1e3", "99999999999999999999", "nan", "null", "[]", "skip", DATASET, VERSION)

hostile_text = st.lists(st.sampled_from(MARKUP) | st.text(max_size=8), max_size=4).map("".join)
field_values = hostile_text | st.sampled_from(ODD_VALUES)
# Ids around the limits of SQL integers (32-bit on PostgreSQL, 64-bit on SQLite), and ints Python parses.
BOUNDARY_IDS = (*map(str, (2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**20)), "00001", "+1", "\uff11")
header_bytes = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30)
HEADER_VALUES = {
    "host": ("127.0.0.1", "localhost:8765", "[::1]", "attacker.example", "127.0.0.1.", "a@127.0.0.1", ""),
    "cookie": ("negminer_reviewer=%3Cxss%3E", 'negminer_reviewer="<xss>"', "negminer_token=x; a=b", "=;;="),
    "authorization": ("Bearer ", "Bearer x", "Basic dXNlcjpwYXNz", "bearer"),
    "content-type": (FORM_TYPE, "multipart/form-data; boundary=x", "application/json", "text/plain"),
    "origin": ("null", "http://attacker.example"),
    "referer": ("http://attacker.example/",),
    "x-forwarded-host": ("attacker.example",),
    "x-forwarded-for": ("127.0.0.1",),
    "accept": ("*/*", "text/html"),
}


@dataclass(frozen=True)
class Target:
    """What the drawing needs to know about the served data: real pair ids and the page's CSRF token."""

    pairs: list[dict[str, str]]
    csrf: str
    query_keys: tuple[str, ...] = ("dataset", "version", "kind", "pair", "token")
    token_values: tuple[str, ...] = ()


# --- the app and its data ---------------------------------------------------------------------


def routes(app: FastAPI) -> list[Route]:
    """Every HTTP route of `app`, in declaration order."""
    found = [route for route in app.routes if isinstance(route, Route)]
    assert found, "the app declares no routes"
    return found


def decision_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Decision)) or 0


def newest_decision(engine: Engine) -> Decision:
    with Session(engine) as session:
        return session.scalars(select(Decision).order_by(Decision.id.desc()).limit(1)).one()


def page_csrf(client: TestClient, headers: dict[str, str] | None = None) -> str:
    html = client.get(f"/review?dataset={DATASET}&version={VERSION}", headers=headers).text
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def flagged_pairs(engine: Engine) -> list[dict[str, str]]:
    views = list_pairs(engine, Filters(dataset=DATASET), limit=100)
    return [{"pair_id": str(v.pair.id), "anchor_id": v.pair.anchor_id, "doc_id": v.pair.doc_id} for v in views]


@pytest.fixture
def loaded(engine, version_dir) -> Engine:
    load_version(engine, version_dir)
    return engine


# --- drawing requests -------------------------------------------------------------------------


def base_form(draw: st.DrawFn, target: Target) -> dict[str, str]:
    """A valid decision form for a real pair, with the page's CSRF token."""
    return {
        **draw(st.sampled_from(target.pairs)),
        "decision": draw(st.sampled_from(DECISIONS)),
        "reviewer": "ana",
        "comment": "",
        "csrf": target.csrf,
        "dataset": DATASET,
        "version": VERSION,
        "kind": "",
    }


def base_params(draw: st.DrawFn, target: Target) -> dict[str, str]:
    """Valid review page parameters naming a real pair."""
    pair = draw(st.sampled_from(target.pairs))["pair_id"]
    return {"dataset": DATASET, "version": VERSION, "kind": "", "pair": pair}


def mutate(draw: st.DrawFn, fields: dict[str, str], target: Target, *, focused: bool) -> dict[str, str]:
    """`fields` with exactly one value replaced (`focused`), else with up to four replaced or dropped."""
    fields = dict(fields)
    if focused:
        name = draw(st.sampled_from(sorted(fields)))
        return {**fields, name: draw_value(draw, name, target)}
    for name in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=4)):
        if draw(st.sampled_from([True, True, True, False])):
            fields[name] = draw_value(draw, name, target)
        else:
            del fields[name]
    return fields


def draw_value(draw: st.DrawFn, key: str, target: Target) -> str:
    """A value likely to matter for the field or parameter `key` (ids always, others on three draws in four),
    else any odd value."""
    ids = st.sampled_from(BOUNDARY_IDS) | st.integers().map(str)
    specific = {
        "pair": ids,
        "pair_id": ids,
        "dataset": st.sampled_from([DATASET, "nothing-here"]),
        "version": st.sampled_from([VERSION, "v0002", "v1"]),
        "kind": st.sampled_from(["near_duplicate", "false_negative", "Bad-Kind"]),
        "decision": st.sampled_from([*DECISIONS, "maybe"]),
        "token": st.sampled_from(target.token_values or ("x",)),
    }.get(key)
    likely = key in ("pair", "pair_id") or (specific is not None and draw(st.sampled_from([True, True, True, False])))
    return draw(specific if likely else field_values)


def draw_body(draw: st.DrawFn, target: Target, *, focused: bool) -> bytes:
    """A decision form with one field replaced (`focused`); else mostly a mutated form with fields
    repeated or added, sometimes raw bytes or an oversized body."""
    kind = "form" if focused else draw(st.sampled_from(["form", "form", "form", "bytes", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "huge":
        return b"comment=" + b"x" * 20_000
    items = list(mutate(draw, base_form(draw, target), target, focused=focused).items())
    if not focused:
        names = st.sampled_from(["csrf", "pair_id", "decision", "comment"]) | st.text(max_size=6)
        items += draw(st.lists(st.tuples(names, field_values), max_size=2))
    return urlencode(items).encode()


def draw_params(draw: st.DrawFn, target: Target, *, focused: bool) -> list[tuple[str, str]]:
    """Review page parameters with one replaced (`focused`), else some replaced or dropped, maybe one added."""
    params = list(mutate(draw, base_params(draw, target), target, focused=focused).items())
    if focused:
        return params
    extra = draw(st.lists(st.sampled_from(target.query_keys) | st.text(min_size=1, max_size=6), max_size=1))
    return [*params, *((key, draw_value(draw, key, target)) for key in extra)]


def draw_headers(draw: st.DrawFn, *, token_values: tuple[str, ...] = (), odd: bool = True) -> dict[str, bytes]:
    """Odd headers on one request in three (when `odd`); `token_values` presented as bearer token or cookie."""
    headers = {}
    odd = odd and draw(st.sampled_from(["none", "none", "odd"])) == "odd"
    for name in draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), unique=True, max_size=4)) if odd else ():
        headers[name] = draw(st.sampled_from(HEADER_VALUES[name]) | header_bytes).encode("latin-1")
    if token_values and draw(st.booleans()):
        headers["authorization"] = f"Bearer {draw(st.sampled_from(token_values))}".encode("latin-1")
    if token_values and draw(st.booleans()):
        headers["cookie"] = f"negminer_token={draw(st.sampled_from(token_values))}".encode("latin-1")
    return headers


def draw_path(draw: st.DrawFn, route: Route) -> str:
    """The route's path with each ``{param}`` replaced by an odd segment (quoted, or raw)."""
    segments = st.sampled_from(["review.js", "review.css", "..", "%2e%2e", "1"]) | field_values.map(
        lambda text: quote(text, safe="")
    )
    return re.sub(r"\{[^}]*\}", lambda _: draw(segments), route.path)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, bytes]
    body: bytes | None

    def send(self, client: TestClient) -> httpx.Response:
        return client.request(
            self.method,
            self.path,
            params=self.params,
            headers=self.headers,
            content=self.body,
            follow_redirects=False,
        )

    def carries_csrf(self, csrf: str) -> bool:
        """Whether the body, read as the app reads forms, has exactly one csrf field equal to `csrf`."""
        if not self.body:
            return False
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return fields.get("csrf") == [csrf]


def draw_call(draw: st.DrawFn, route: Route, target: Target, *, focused: bool = False) -> Call:
    """A request to `route`: valid but for one value with one of its methods (`focused`), else
    anything: mostly its methods, odd headers, several values replaced, dropped or added."""
    methods = sorted(route.methods or {"GET"})
    if focused:
        method = draw(st.sampled_from([m for m in methods if m != "HEAD"] or methods))
    else:
        method = draw(st.sampled_from(methods * 3 + list(METHODS)))
    body = draw_body(draw, target, focused=focused) if method in ("POST", "PUT", "PATCH") else None
    headers = draw_headers(draw, token_values=target.token_values, odd=not focused)
    if body is not None and "content-type" not in headers:
        headers["content-type"] = FORM_TYPE.encode()
    params = draw_params(draw, target, focused=focused)
    return Call(method, draw_path(draw, route), params, headers, body)


# --- the checks every answer must pass --------------------------------------------------------


def check_escaped(response: httpx.Response) -> None:
    """No planted marker unescaped in HTML; other answers echoing one must not be sniffed as HTML."""
    raw = [marker for marker in RAW_MARKERS if marker in response.text]
    if not raw:
        return
    content_type = response.headers.get("content-type", "")
    assert not content_type.startswith("text/html"), f"unescaped {raw} in an HTML answer: {response.text[:2000]}"
    assert response.headers.get("x-content-type-options") == "nosniff", f"{raw} echoed without nosniff"


def check_answer(call: Call, response: httpx.Response, stored: int, csrf: str) -> None:
    """Properties 1-3 for any request: no 5xx, nothing unescaped, nothing stored without the CSRF token."""
    assert response.status_code < 500, f"{call.method} {call.path} answered {response.status_code}"
    check_escaped(response)
    assert stored in (0, 1), f"{call.method} {call.path} stored {stored} decisions"
    if stored:
        assert call.carries_csrf(csrf), f"a decision was stored without the CSRF token: {call}"


def send_checked(client: TestClient, engine: Engine, call: Call, csrf: str) -> httpx.Response:
    before = decision_count(engine)
    response = call.send(client)
    check_answer(call, response, decision_count(engine) - before, csrf)
    return response


def run_fuzz(body: Callable[..., None]) -> None:
    """Run `body(draw)` under the shared settings (fixtures are built once, outside hypothesis)."""

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        body(data.draw)

    run()


# --- the properties ---------------------------------------------------------------------------


def test_every_route_answers_hostile_requests_without_a_server_error(loaded):
    """Property 1 (with 2 and 3 checked on every answer): each example sends one request per route."""
    app = create_app(loaded)
    statuses: dict[str, list[int]] = {}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        target = Target(pairs=flagged_pairs(loaded), csrf=page_csrf(client))

        def body(draw: st.DrawFn) -> None:
            for route, focused in itertools.product(routes(app), (True, False)):
                response = send_checked(client, loaded, draw_call(draw, route, target, focused=focused), target.csrf)
                statuses.setdefault(route.path, []).append(response.status_code)

        run_fuzz(body)
    unreached = [path for path, codes in statuses.items() if min(codes) >= 400]
    assert not unreached, f"no drawn request got past validation of {unreached}: extend the strategies"


def test_posted_text_is_stored_as_typed_and_shown_escaped(loaded):
    """Property 2: hostile reviewer and comment text, stored exactly (cleaned) and shown only escaped."""
    stored: list[str] = []
    with TestClient(create_app(loaded), base_url="http://127.0.0.1") as client:
        target = Target(pairs=flagged_pairs(loaded), csrf=page_csrf(client))

        def body(draw: st.DrawFn) -> None:
            form = base_form(draw, target)
            form["reviewer"] = draw(st.sampled_from(MARKUP) | hostile_text)
            form["comment"] = draw(hostile_text)
            call = Call("POST", "/review/decide", [], {"content-type": FORM_TYPE.encode()}, urlencode(form).encode())
            response = send_checked(client, loaded, call, target.csrf)
            if response.status_code != 303:
                assert response.status_code == 400, response.text
                return
            check_stored(client, loaded, form, response.headers["location"])
            stored.append(form["comment"])

        run_fuzz(body)
    assert len(stored) >= EXAMPLES // 4, f"only {len(stored)} hostile decisions were stored"


def check_stored(client: TestClient, engine: Engine, form: dict[str, str], location: str) -> None:
    """The newest decision holds the cleaned text; the pages that show it show it escaped."""
    row = newest_decision(engine)
    reviewer = clean_text(form["reviewer"], what="reviewer", max_length=MAX_REVIEWER, required=True)
    comment = clean_text(form["comment"], what="comment", max_length=MAX_COMMENT, required=False)
    assert (row.reviewer, row.comment) == (reviewer, comment)
    pair_page = f"/review?dataset={DATASET}&version={VERSION}&pair={form['pair_id']}"
    pages = {url: client.get(url) for url in (pair_page, location, "/")}
    for response in pages.values():
        assert response.status_code == 200
        check_escaped(response)
    history = pages[pair_page].text.split('id="history"')[1]
    assert f"by {escape(reviewer)} on" in history
    assert comment is None or f"<q>{escape(comment)}</q>" in history
    assert f'value="{escape(form["reviewer"].strip())}"' in pages[pair_page].text  # the remembered reviewer


def test_no_decision_is_stored_without_the_csrf_token(loaded):
    """Property 3: valid forms whose csrf field is missing, repeated, altered or foreign store nothing."""
    counts = {"with": 0, "without": 0}
    with TestClient(create_app(loaded), base_url="http://127.0.0.1") as client:
        target = Target(pairs=flagged_pairs(loaded), csrf=page_csrf(client))
        valid = target.csrf
        forged = st.sampled_from(
            [valid + "x", valid[:-1], valid[1:], valid.swapcase(), valid[::-1], " " + valid, "", "fälschung"]
        )

        def body(draw: st.DrawFn) -> None:
            items = [(k, v) for k, v in base_form(draw, target).items() if k != "csrf"]
            how = draw(st.sampled_from(["valid", "forged", "missing", "repeated"]))
            csrf = {
                "valid": [valid],
                "forged": [draw(forged | field_values)],
                "missing": [],
                "repeated": draw(st.permutations([valid, draw(st.just(valid) | forged)])),
            }[how]
            items += [("csrf", value) for value in csrf]
            headers = draw_headers(draw) if draw(st.booleans()) else {}
            headers.setdefault("content-type", FORM_TYPE.encode())
            call = Call("POST", "/review/decide", [], headers, urlencode(items).encode())
            before = decision_count(loaded)
            send_checked(client, loaded, call, valid)
            counts["with" if decision_count(loaded) > before else "without"] += 1

        run_fuzz(body)
    assert counts["with"] and counts["without"], counts  # both outcomes were exercised


BINDS = {"192.0.2.7": "http://192.0.2.7", "0.0.0.0": "http://review.example", "::": "http://review.example"}
WRONG_TOKENS = (TOKEN + "x", TOKEN[:-1], TOKEN[1:], TOKEN.upper(), f'"{TOKEN}x"', "", "t\u00f6ken")


def test_a_non_loopback_bind_answers_nothing_without_the_token(loaded):
    """Property 4: with a token (required off loopback), every route refuses requests lacking it."""
    owner = {"authorization": f"Bearer {TOKEN}"}
    with contextlib.ExitStack() as stack:
        apps = {bind: create_app(loaded, token=TOKEN, host=bind) for bind in BINDS}
        clients = {bind: stack.enter_context(TestClient(app, base_url=BINDS[bind])) for bind, app in apps.items()}
        targets = {}
        for bind, client in clients.items():
            assert client.get("/", headers=owner).status_code == 200  # the token does open it
            targets[bind] = Target(flagged_pairs(loaded), page_csrf(client, owner), token_values=WRONG_TOKENS)
            assert not client.cookies  # nothing handed the token on as a cookie

        def body(draw: st.DrawFn) -> None:
            bind = draw(st.sampled_from(sorted(BINDS)))
            for route, focused in itertools.product(routes(apps[bind]), (True, False)):
                call = draw_call(draw, route, targets[bind], focused=focused)
                if call.method == "POST" and draw(st.booleans()):  # the URL token opens GET pages only
                    call = Call(call.method, call.path, [*call.params, ("token", TOKEN)], call.headers, call.body)
                response = send_checked(clients[bind], loaded, call, targets[bind].csrf)
                assert 400 <= response.status_code < 500, f"{call} answered {response.status_code} without the token"

        run_fuzz(body)


@pytest.mark.parametrize("pair_id", [2**31, 2**63, 10**20])
def test_ids_beyond_the_integer_columns_name_no_pair(loaded, pair_id):
    """An id past the database's INTEGER range is an unknown pair, not an OverflowError (a 500)."""
    assert get_pair(loaded, pair_id) is None
    with pytest.raises(InputError, match="no flagged pair"):
        record_decision(loaded, pair_id, "skip", reviewer="ana")
    assert not is_valid_id(create_engine("postgresql+psycopg://localhost/audit"), pair_id)  # 32-bit ids there
    with TestClient(create_app(loaded), base_url="http://127.0.0.1") as client:
        assert client.get(f"/review?dataset={DATASET}&pair={pair_id}").status_code == 200
        form = {**flagged_pairs(loaded)[0], "pair_id": str(pair_id), "decision": "skip", "reviewer": "ana"}
        form |= {"csrf": page_csrf(client), "dataset": DATASET, "version": VERSION}
        response = client.post("/review/decide", data=form, follow_redirects=False)
        assert response.status_code == 400 and "no flagged pair" in response.text
