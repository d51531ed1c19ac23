"""The demo job behind `make demo`: the whole pipeline once, on the embedded defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlmodel import func, select

from digest.app import App
from digest.ingest.run import IngestReport, run_ingest
from digest.issues import assemble, timeline
from digest.mail.preview import write_preview
from digest.paths import config_dir
from digest.sending.send import SendReport, send_issue
from digest.storage.db import upgrade
from digest.storage.models import IssueStatus
from subscribers import import_csv
from subscribers.models import Subscriber

BRIEFING = "my-briefing"  # the demo's personal newsletter (config/digest.toml)


@dataclass
class NewsletterOutcome:
    slug: str
    issue_id: int | None
    status: str
    articles: int
    note: str = ""
    preview: dict[str, Path] = field(default_factory=dict)
    send: SendReport | None = None


@dataclass
class DemoReport:
    ingest: IngestReport
    subscribers_imported: int
    newsletters: list[NewsletterOutcome]
    outbox: Path


def run_demo(app: App, preview_dir: Path) -> DemoReport:
    """Upgrade the schema, load sample subscribers once, ingest, then build, preview and send
    each newsletter's issue that is due (as `digest send` would); an issue not due yet is only
    prepared, so the studio shows it as the next issue."""
    upgrade(app.engine)
    imported = _load_sample_subscribers(app)
    ingest_report = run_ingest(app)
    outcomes = []
    for newsletter in app.settings.newsletters:
        target = timeline.send_target(app, newsletter.slug)
        issue = assemble.build_issue(app, newsletter.slug, target.period)
        with app.session() as session:
            links = assemble.issue_articles(session, issue.id or 0)
            count = sum(1 for link, _ in links if not link.excluded)
        outcome = NewsletterOutcome(newsletter.slug, issue.id, issue.status, count)
        if issue.status == IssueStatus.SKIPPED:
            outcome.note = issue.skip_reason or "skipped"
        elif target.ahead:  # the next issue, before its time: prepared, as an editor finds it
            outcome.preview = write_preview(app, newsletter.slug, preview_dir, issue)
            outcome.note = (
                f"next issue, for {target.period.isoformat()}: a draft the studio shows; it goes "
                f"out at its scheduled time (or now: digest send {newsletter.slug} --ahead)"
            )
        else:
            outcome.preview = write_preview(app, newsletter.slug, preview_dir, issue)
            outcome.send = send_issue(app, issue.id or 0)
            with app.session() as session:
                refreshed = assemble.get_issue(
                    session, newsletter.slug, datetime.fromisoformat(issue.period)
                )
                outcome.status = refreshed.status if refreshed else issue.status
        outcomes.append(outcome)
    return DemoReport(ingest_report, imported, outcomes, Path(app.settings.delivery.outbox_dir))


def _load_sample_subscribers(app: App) -> int:
    """Import config/sample/subscribers.csv into an empty database (never twice), then the
    readers of the demo's personal newsletter (subscribers-briefing.csv) when it is configured."""
    known = {n.slug for n in app.settings.newsletters}
    added = 0
    with app.session() as session:
        if session.exec(select(func.count()).select_from(Subscriber)).one() > 0:
            return 0
        for name, needs in (("subscribers.csv", set()), ("subscribers-briefing.csv", {BRIEFING})):
            if not needs <= known:
                continue
            sample = config_dir() / "sample" / name
            with sample.open(encoding="utf-8", newline="") as handle:
                report = import_csv(
                    session, handle, now=app.now(), known_newsletters=known,
                    file_name=str(sample), source="demo",
                )  # fmt: skip
            added += int(report.added)
    return added
