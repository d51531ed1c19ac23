"""What ops need to see at a glance: newsletters, their issues and deliveries, source health."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from digest import assemble
from digest.app import App
from digest.models import Delivery, Issue, Source


def status_report(app: App) -> dict[str, Any]:
    settings = app.settings
    now = app.now()
    with app.session() as session:
        newsletters = []
        for newsletter in settings.newsletters:
            last = assemble.latest_issue(session, newsletter.slug)
            newsletters.append(
                {
                    "slug": newsletter.slug,
                    "title": newsletter.title,
                    "schedule": newsletter.schedule,
                    "timezone": str(settings.newsletter_timezone(newsletter)),
                    "next_run": assemble.next_period(settings, newsletter, now).isoformat(),
                    "last_issue": _issue_summary(session, last) if last else None,
                }
            )
        sources = [_source_summary(source) for source in session.exec(select(Source)).all()]
    return {"now": now.isoformat(), "newsletters": newsletters, "sources": sources}


def _issue_summary(session: Session, issue: Issue) -> dict[str, Any]:
    counts = dict(
        session.exec(
            select(Delivery.status, func.count())
            .where(Delivery.issue_id == issue.id)
            .group_by(col(Delivery.status))
        ).all()
    )
    return {
        "id": issue.id,
        "period": issue.period,
        "status": issue.status,
        "subject": issue.subject,
        "skip_reason": issue.skip_reason,
        "deliveries": counts,
    }


def _source_summary(source: Source) -> dict[str, Any]:
    return {
        "name": source.name,
        "last_success_at": source.last_success_at.isoformat() if source.last_success_at else None,
        "last_error": source.last_error,
        "consecutive_failures": source.consecutive_failures,
    }
