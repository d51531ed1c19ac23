"""`POST /api/articles`: bearer token, validation naming index and field, upsert, counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from digest.app import App
from digest.storage.models import Article, ArticleTopic, DateSource, Source
from digest.web.server import create_app
from tests.conftest import DEFAULT_NOW

TOKEN = "push-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARTICLE = {
    "title": "Ferry line to the islands opens in İstanbul",
    "url": "https://cms.example/ferry?utm_source=cms",
    "summary": "<p>Every <b>hour</b>.</p><script>alert(1)</script>",
    "published_at": "2026-11-25T09:00:00+03:00",
    "tags": ["Transport"],
    "image": "https://cms.example/ferry.jpg",
    "author": "Deniz Karaca",
}


def client(
    engine: Engine, make_app: Callable[..., App], token: str | None = TOKEN, **overrides: Any
) -> TestClient:
    env = {"DIGEST_API_TOKEN": token} if token else {}
    return TestClient(create_app(make_app(engine, env=env, **overrides)))


def stored(engine: Engine) -> list[Article]:
    with Session(engine) as session:
        return list(session.exec(select(Article).order_by(col(Article.id))).all())


def test_one_article_is_stored_sanitized_and_classified(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    response = client(any_engine, make_app).post("/api/articles", json=ARTICLE, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "source": "api",
        "received": 1,
        "new": 1,
        "updated": 0,
        "unchanged": 0,
    }
    (article,) = stored(any_engine)
    assert article.url == "https://cms.example/ferry" and article.source == "api"
    assert (
        article.summary_html == "<p>Every <b>hour</b>.</p>"
        and article.summary_text == "Every hour."
    )
    assert article.date_source == DateSource.PUBLISHED
    with Session(any_engine) as session:
        link = session.exec(select(ArticleTopic)).one()
        assert (link.newsletter, link.reasons) == ("turkey-unpacked", ["keyword:Istanbul"])
        source = session.exec(select(Source).where(Source.name == "api")).one()
        assert source.kind == "api" and source.last_success_at == DEFAULT_NOW


def test_a_list_then_the_same_list_again(any_engine: Engine, make_app: Callable[..., App]) -> None:
    web = client(any_engine, make_app)
    items = [ARTICLE, {"title": "Second", "url": "https://cms.example/second", "guid": "cms-2"}]
    first = web.post("/api/articles?source=cms-desk", json=items, headers=AUTH).json()
    assert (first["source"], first["new"]) == ("cms-desk", 2)
    changed = [ARTICLE, {**items[1], "title": "Second, corrected"}]
    again = web.post(
        "/api/articles?source=cms-desk", json={"articles": changed}, headers=AUTH
    ).json()
    assert (again["new"], again["updated"], again["unchanged"]) == (0, 1, 1)
    assert [a.title for a in stored(any_engine)][1] == "Second, corrected"


def test_validation_names_index_and_field_and_stores_nothing(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    items = [
        ARTICLE,
        {"title": "No URL"},
        {"title": "x", "url": "ftp://x", "published_at": "later"},
        7,
    ]
    response = client(any_engine, make_app).post("/api/articles", json=items, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 1, "field": "url", "message": "required"},
        {"index": 2, "field": "url", "message": "must be an absolute http(s) URL"},
        {
            "index": 2,
            "field": "published_at",
            "message": "not a date-time (ISO 8601 like 2026-11-25T08:00:00Z, or RFC 822)",
        },
        {"index": 3, "field": "", "message": "expected an object with title and url"},
    ]
    assert stored(any_engine) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer wrong-token"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": f"bearer {TOKEN}"}, 200),
    ],
)
def test_the_bearer_token(
    engine: Engine, make_app: Callable[..., App], headers: dict[str, str], status: int
) -> None:
    response = client(engine, make_app).post("/api/articles", json=ARTICLE, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


def test_no_token_configured_is_503_and_disabled_is_404(
    engine: Engine, make_app: Callable[..., App]
) -> None:
    response = client(engine, make_app, token=None).post(
        "/api/articles", json=ARTICLE, headers=AUTH
    )
    assert response.status_code == 503 and "DIGEST_API_TOKEN" in response.json()["error"]
    disabled = client(engine, make_app, api={"enabled": False})
    assert disabled.post("/api/articles", json=ARTICLE, headers=AUTH).status_code == 404


def test_bad_bodies(engine: Engine, make_app: Callable[..., App]) -> None:
    web = client(engine, make_app)
    bad_json = web.post("/api/articles", content=b"{not json", headers=AUTH)
    assert bad_json.status_code == 400 and "not valid UTF-8 JSON" in bad_json.json()["error"]
    too_big = web.post("/api/articles", content=b"[" + b" " * 5_000_001 + b"]", headers=AUTH)
    assert too_big.status_code == 413
    too_many = web.post("/api/articles", json=[ARTICLE] * 1001, headers=AUTH)
    assert too_many.status_code == 413
    bad_source = web.post("/api/articles?source=../etc", json=ARTICLE, headers=AUTH)
    assert bad_source.status_code == 422
    assert stored(engine) == []
