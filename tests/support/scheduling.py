"""Helpers for scheduler tests: config files for subprocesses, sample subscribers, fakes, and
a way to run `digest` as a separate process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from digest.app import App
from digest.issues.assemble import build_issue
from digest.scheduling.pipeline import Pipeline, SendRequest, real_pipeline
from digest.storage.models import Article, Issue, IssueStatus, ScheduleRun
from subscribers import import_csv
from tests.support.articles import add_article

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_SUBSCRIBERS = REPO_ROOT / "config" / "sample" / "subscribers.csv"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Our config's shape only: tables of scalars, arrays of tables, inline nested tables."""
    lines: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.insert(0, f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


SEED_FROM = datetime(2026, 10, 25, tzinfo=UTC)


def seed_articles(app: App) -> object:
    """Turkey and climate articles every 6 hours from 2026-10-25 to 2026-12-05, once.

    Scheduler tests use this as their "ingestion": they test when things happen, and must not
    depend on parsing feeds (ingestion has its own tests).
    """
    with app.session() as session:
        if session.execute(select(func.count()).select_from(Article)).scalar_one():
            return "already seeded"
    for index in range(41 * 4):
        moment = SEED_FROM + timedelta(hours=6 * index)
        add_article(
            app,
            f"Story {index}: Ankara, Istanbul and the climate",
            moment,
            source="world" if index % 2 else "business",
            topics={"turkey-unpacked": ["tag: Turkey"], "climate-weekly": ["tag: Climate"]},
        )
    return "seeded"


def seeded_pipeline() -> Pipeline:
    """The real build and send, with `seed_articles` for ingestion."""
    return Pipeline(ingest=seed_articles, build=build_issue, send=real_pipeline().send)


def load_sample_subscribers(app: App, *, extra_csv: str = "") -> int:
    text = SAMPLE_SUBSCRIBERS.read_text(encoding="utf-8") + extra_csv
    with app.session() as session:
        report = import_csv(
            session,
            io.StringIO(text),
            now=app.now(),
            known_newsletters={n.slug for n in app.settings.newsletters},
            source="test",
        )
    return int(report.subscribers_created)


def issues_of(engine: Engine, newsletter: str | None = None) -> list[Issue]:
    with Session(engine) as session:
        statement = select(Issue).order_by(Issue.period)  # type: ignore[arg-type]
        if newsletter:
            statement = statement.where(Issue.newsletter == newsletter)  # type: ignore[arg-type]
        return list(session.execute(statement).scalars())


def runs_of(engine: Engine, newsletter: str | None = None) -> list[ScheduleRun]:
    with Session(engine) as session:
        statement = select(ScheduleRun).order_by(ScheduleRun.period)  # type: ignore[arg-type]
        if newsletter:
            statement = statement.where(ScheduleRun.newsletter == newsletter)  # type: ignore[arg-type]
        return list(session.execute(statement).scalars())


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


@dataclass
class FakeReport:
    issue_id: int
    accepted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    pending: int = 0
    already_done: bool = False


@dataclass
class RecordingPipeline:
    """The real pipeline, watched: counts calls; `send_hook` can stop or fail a send."""

    inner: Pipeline = field(default_factory=seeded_pipeline)
    ingests: int = 0
    builds: list[tuple[str, datetime]] = field(default_factory=list)
    sends: list[tuple[int, SendRequest]] = field(default_factory=list)
    send_hook: Callable[[App, int, SendRequest], Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pipeline(self) -> Pipeline:
        return Pipeline(ingest=self._ingest, build=self._build, send=self._send)

    def _ingest(self, app: App) -> object:
        with self.lock:
            self.ingests += 1
        return self.inner.ingest(app)

    def _build(self, app: App, slug: str, period: datetime) -> Issue:
        with self.lock:
            self.builds.append((slug, period))
        return self.inner.build(app, slug, period)

    def _send(self, app: App, issue_id: int, request: SendRequest) -> Any:
        with self.lock:
            self.sends.append((issue_id, request))
        if self.send_hook is not None:
            result = self.send_hook(app, issue_id, request)
            if result is not None:
                return result
        return self.inner.send(app, issue_id, request)


def mark_sent(app: App, issue_id: int) -> None:
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.status = IssueStatus.SENT
        session.add(issue)


def digest_process(
    args: list[str],
    *,
    config: Path,
    database_url: str,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """`digest ARGS` as a separate process on this config and database."""
    env = {
        **os.environ,
        "DIGEST_CONFIG": str(config),
        "DIGEST_DATABASE_URL": database_url,
        "DIGEST_SECRET_KEY": "test-secret-key-0123456789abcdef",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "digest", *args],
        env=env,
        cwd=str(cwd or config.parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
