"""The review page over HTTP (FastAPI's test client): rendering, escaping, validation, access."""

from __future__ import annotations

import re
from html import unescape

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from negminer.audit.db import FlaggedPair
from negminer.audit.loader import load_version
from negminer.audit.queries import Filters, get_pair, history, list_pairs
from negminer.audit.web import check_binding, create_app, is_loopback
from negminer.errors import ConfigError

DATASET = "scifact-audit"  # the dataset conftest.py builds
TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture
def client(engine, version_dir):
    load_version(engine, version_dir)
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of the page's decision form (empty when it shows no pair)."""
    if 'id="decide"' not in html:
        return {}
    decide = html.split('id="decide"')[1].split("</form>")[0]
    return {name: unescape(value) for name, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', decide)}


def form(client, pair_id: int, decision: str, *, reviewer="ana", comment="", csrf=None, **extra):
    page = client.get(f"/review?dataset={DATASET}&version=v0001").text
    shown = hidden_fields(client.get(f"/review?dataset={DATASET}&version=v0001&pair={pair_id}").text)
    body = {
        "pair_id": str(pair_id),
        "anchor_id": shown.get("anchor_id", "unknown"),
        "doc_id": shown.get("doc_id", "unknown"),
        "decision": decision,
        "reviewer": reviewer,
        "comment": comment,
        "csrf": csrf if csrf is not None else csrf_of(page),
        "dataset": DATASET,
        "version": "v0001",
        "kind": "",
        **extra,
    }
    return client.post("/review/decide", data=body, follow_redirects=False)


def test_index_lists_loaded_versions_with_progress(client):
    page = client.get("/")
    assert page.status_code == 200 and DATASET in page.text and "v0001" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-content-type-options"] == "nosniff"


def test_review_page_shows_the_lowest_quality_pair_side_by_side(client, engine):
    first = list_pairs(engine, Filters(dataset=DATASET), limit=1)[0].pair
    page = client.get(f"/review?dataset={DATASET}")
    assert page.status_code == 200
    html = page.text
    assert f'data-pair-id="{first.id}"' in html
    for element in ('id="anchor"', 'id="positive"', 'id="candidate"', 'id="score-plot"', 'id="queue"', "<progress"):
        assert element in html
    assert first.anchor_text in html and first.doc_title in html
    assert f"{first.score:.3f}" in html and f"{first.quality:.3f}" in html
    assert html.count('class="bar-positive"') >= 1 and html.count('class="bar-negative"') >= 1
    assert 'id="plot-marker"' in html
    for decision, key in (("is_positive", "p"), ("is_negative", "n"), ("drop_pair", "d"), ("skip", "s")):
        assert f'value="{decision}"' in html and f'data-key="{key}"' in html


def test_static_assets_and_unknown_names(client):
    assert "keydown" in client.get("/static/review.js").text
    assert client.get("/static/review.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../db.py").status_code == 404
    assert client.get("/static/secrets.txt").status_code == 404


def test_a_decision_is_stored_and_the_next_pair_is_shown(client, engine):
    first, second = (v.pair for v in list_pairs(engine, Filters(dataset=DATASET), limit=2))
    response = form(client, first.id, "is_positive", reviewer="Ana Díaz", comment="same finding")
    assert response.status_code == 303
    assert response.headers["location"] == f"/review?dataset={DATASET}&version=v0001"
    assert get_pair(engine, first.id).decision == "is_positive"
    [row] = history(engine, DATASET, first.anchor_id, first.doc_id)
    assert (row.reviewer, row.comment, row.version, row.kind) == ("Ana Díaz", "same finding", "v0001", first.kind)
    page = client.get(response.headers["location"]).text
    assert f'data-pair-id="{second.id}"' in page
    assert 'value="Ana Díaz"' in page  # the reviewer is remembered (cookie)
    assert "1 / " in page  # progress


def test_a_form_whose_pair_id_now_names_another_pair_is_refused(client, engine):
    seen, other = (v.pair for v in list_pairs(engine, Filters(dataset=DATASET), limit=2))
    assert (seen.anchor_id, seen.doc_id) != (other.anchor_id, other.doc_id)
    fields = hidden_fields(client.get(f"/review?dataset={DATASET}&version=v0001&pair={seen.id}").text)
    assert (fields["pair_id"], fields["anchor_id"], fields["doc_id"]) == (str(seen.id), seen.anchor_id, seen.doc_id)
    with Session(engine) as session, session.begin():  # a reload reusing ids, while the page is open
        session.execute(delete(FlaggedPair).where(FlaggedPair.id == seen.id))
        session.execute(update(FlaggedPair).where(FlaggedPair.id == other.id).values(id=seen.id))
    response = client.post(
        "/review/decide", data={**fields, "decision": "is_positive", "reviewer": "ana"}, follow_redirects=False
    )
    assert response.status_code == 400
    assert f"pair {seen.id} is no longer the pair you reviewed" in unescape(response.text)
    assert history(engine, DATASET, other.anchor_id, other.doc_id) == []


def test_text_from_data_and_reviewers_is_escaped(client, engine):
    pair = list_pairs(engine, Filters(dataset=DATASET), limit=1)[0].pair
    with Session(engine) as session, session.begin():
        session.execute(
            update(FlaggedPair)
            .where(FlaggedPair.id == pair.id)
            .values(anchor_text="<script>alert('anchor')</script>", why='"><img src=x onerror=alert(1)>')
        )
    form(client, pair.id, "skip", reviewer="<b>mallory</b>", comment="<script>alert('c')</script>")
    html = client.get(f"/review?dataset={DATASET}&pair={pair.id}").text
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>mallory" not in html
    assert "&lt;script&gt;alert(&#39;anchor&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;mallory&lt;/b&gt;" in html  # in the decision history


@pytest.mark.parametrize(
    ("changes", "status", "message"),
    [
        ({"decision": "maybe"}, 400, "decision"),
        ({"reviewer": ""}, 400, "reviewer is required"),
        ({"pair_id": "0"}, 400, "pair_id"),
        ({"pair_id": "99999"}, 400, "no flagged pair"),
        ({"dataset": "../../etc"}, 400, "dataset"),
        ({"extra": "1"}, 400, "extra"),
        ({"csrf": "forged"}, 403, "stale or forged"),
        ({"csrf": "fälschung"}, 403, "stale or forged"),
    ],
)
def test_bad_forms_are_refused_and_nothing_is_stored(client, engine, changes, status, message):
    pair = list_pairs(engine, Filters(dataset=DATASET), limit=1)[0].pair
    fields = {"decision": "skip", **changes}
    decision = fields.pop("decision")
    response = form(client, int(fields.pop("pair_id", pair.id)), decision, **fields)
    assert response.status_code == status
    assert message in response.text
    assert history(engine, DATASET, pair.anchor_id, pair.doc_id) == []


def test_repeated_fields_and_huge_bodies_are_refused(client, engine):
    pair = list_pairs(engine, Filters(dataset=DATASET), limit=1)[0].pair
    twice = f"pair_id={pair.id}&pair_id={pair.id}&decision=skip&reviewer=a&csrf=x&dataset={DATASET}&version=v0001"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/review/decide", content=twice, headers=headers).status_code == 400
    huge = "comment=" + "x" * 20_000
    assert client.post("/review/decide", content=huge, headers=headers).status_code == 400


@pytest.mark.parametrize("query", ["dataset=<script>", "version=v1", "kind=Bad-Kind", "pair=0", "pair=abc"])
def test_query_parameters_are_validated(client, query):
    assert client.get(f"/review?{query}").status_code == 422


def test_kind_filter_limits_the_queue(client):
    html = client.get(f"/review?dataset={DATASET}&kind=near_duplicate").text
    queue = html.split('id="queue"')[1].split("</ol>")[0]
    assert "near duplicate" in queue and "false negative" not in queue


def test_unknown_dataset_redirects_to_the_index(client):
    response = client.get("/review?dataset=nothing-here", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_token_is_required_when_set(engine, version_dir):
    load_version(engine, version_dir)
    with TestClient(create_app(engine, token=TOKEN), base_url="http://127.0.0.1") as anonymous:
        assert anonymous.get("/").status_code == 401
        assert anonymous.get("/", headers={"authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        assert anonymous.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert anonymous.get("/?token=t%C3%B6ken").status_code == 401  # non-ASCII: refused, not a crash
        response = anonymous.get(f"/review?dataset={DATASET}&token={TOKEN}", follow_redirects=False)
        assert response.status_code == 303 and "token" not in response.headers["location"]
        assert anonymous.get(response.headers["location"]).status_code == 200  # the cookie now carries it


def test_a_page_on_another_host_name_is_refused(engine, version_dir):
    """DNS rebinding: attacker.example re-pointed at 127.0.0.1 reaches the socket, not the page."""
    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(dataset=DATASET), limit=1)[0].pair
    app = create_app(engine)
    with TestClient(app, base_url="http://127.0.0.1") as own:
        csrf = csrf_of(own.get(f"/review?dataset={DATASET}&version=v0001").text)
    with TestClient(app, base_url="http://attacker.example:8765") as rebound:
        page = rebound.get(f"/review?dataset={DATASET}&version=v0001")
        assert page.status_code == 400 and "not served as host 'attacker.example:8765'" in page.text
        assert 'name="csrf"' not in page.text
        assert form(rebound, pair.id, "drop_pair", csrf=csrf).status_code == 400  # even with a valid token
    assert history(engine, DATASET, pair.anchor_id, pair.doc_id) == []


@pytest.mark.parametrize(
    ("bound", "host", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:8765", True),
        ("127.0.0.1", "localhost:8765", True),
        ("127.0.0.1", "[::1]:8765", True),
        ("127.0.0.1", "LOCALHOST", True),
        ("127.0.0.1", "localhost.attacker.example", False),
        ("127.0.0.1", "attacker.example@127.0.0.1", False),
        ("127.0.0.1", "127.0.0.1:8765/x", False),
        ("127.0.0.1", "", False),
        ("::1", "[0:0:0:0:0:0:0:1]:8765", True),
        ("192.0.2.7", "192.0.2.7:8765", True),
        ("192.0.2.7", "review.example", False),
        ("0.0.0.0", "review.example", True),  # a wildcard bind with a token: the token guards it
    ],
)
def test_host_header_must_name_the_bound_host_or_loopback(engine, bound, host, allowed):
    app = create_app(engine, token=TOKEN, host=bound)
    with TestClient(app, base_url="http://127.0.0.1", headers={"authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/healthz", headers={"host": host}).status_code == (200 if allowed else 400)


def test_allowed_hosts_add_names(engine):
    app = create_app(engine, token=TOKEN, host="0.0.0.0", allowed_hosts=["Review.Example"])
    with TestClient(app, base_url="http://review.example", headers={"authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"host": "other.example"}).status_code == 400


def test_binding_beyond_loopback_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="needs --token"):
        check_binding("0.0.0.0", None)
    with pytest.raises(ConfigError, match="at least 16"):
        check_binding("127.0.0.1", "short")
