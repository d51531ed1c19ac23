"""Shared fixtures: migrated SQLite and PostgreSQL databases, and an App built around them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from digest.app import App, fixed_clock
from digest.config import Settings, settings_from_mapping
from digest.storage.db import make_engine, upgrade

PG_URL = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-secret-key-0123456789abcdef"
DEFAULT_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _pg_available() -> bool:
    try:
        engine = make_engine(PG_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


_PG_OK: bool | None = None


def require_pg() -> None:
    """On CI PostgreSQL is mandatory: a missing server fails instead of skipping."""
    global _PG_OK
    if _PG_OK is None:
        _PG_OK = _pg_available()
    if not _PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'digest.db'}"


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    """A fresh, migrated SQLite database."""
    eng = make_engine(sqlite_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema, dropped afterwards."""
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'digest.db'}"
        eng = make_engine(url)
        upgrade(eng)
        eng.dispose()
        yield url
    else:
        url = request.getfixturevalue("pg_url")
        eng = make_engine(url)
        upgrade(eng)
        eng.dispose()
        yield url


@pytest.fixture
def any_engine(db_url: str) -> Iterator[Engine]:
    """The same test on SQLite and on PostgreSQL."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A small, valid configuration as a mapping (tests tweak it)."""
    feeds = REPO_ROOT / "config" / "sample" / "feeds"
    return {
        "site": {
            "name": "Test Post",
            "base_url": "https://news.example.com",
            "timezone": "Europe/Istanbul",
            # The Host that starlette's TestClient sends.
            "allowed_hosts": ["testserver"],
        },
        "sender": {
            "from_email": "news@example.com",
            "from_name": "Test Post",
            "postal_address": "1 Test Street, Testville",
            "unsubscribe_mailto": "unsubscribe@example.com",
        },
        "delivery": {"transport": "outbox", "outbox_dir": str(tmp_path / "outbox")},
        "sources": [
            {"name": "world", "kind": "rss", "url": str(feeds / "world.xml")},
            {"name": "climate", "kind": "rss", "url": str(feeds / "climate.atom")},
            {"name": "business", "kind": "rss", "url": str(feeds / "business.xml")},
        ],
        "newsletters": [
            {
                "slug": "turkey-unpacked",
                "title": "Turkey Unpacked",
                "schedule": "0 8 * * *",
                "timezone": "Europe/Istanbul",
                "window": "8d",
                "min_articles": 2,
                "max_articles": 10,
                "topic": {"tags": ["Turkey"], "keywords": ["Istanbul", "Ankara"]},
            },
            {
                "slug": "climate-weekly",
                "title": "Climate Weekly",
                "schedule": "0 9 * * 5",
                "timezone": "Europe/London",
                "window": "8d",
                "min_articles": 2,
                "max_articles": 10,
                "topic": {"tags": ["Climate"], "keywords": ["drought"]},
            },
        ],
    }


def make_settings(
    tmp_path: Path,
    url: str,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    raw = base_config(tmp_path)
    raw["database"] = {"url": url}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    environment = {"DIGEST_SECRET_KEY": TEST_SECRET, **(env or {})}
    return settings_from_mapping(raw, file="test.toml", env=environment)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., App]:
    """make_app(engine, now=..., **config_overrides) → an App over that engine."""

    def build(
        engine: Engine,
        now: datetime = DEFAULT_NOW,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> App:
        settings = make_settings(tmp_path, str(engine.url), overrides, env)
        return App(settings=settings, clock=fixed_clock(now), _engine=engine)

    return build
