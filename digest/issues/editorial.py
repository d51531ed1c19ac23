"""The editor's controls on a draft issue: pin, exclude, reorder, subject, intro, approve.

Each change is stored on the issue's rows and the draft is rebuilt and re-rendered at once,
so what the editor previews is exactly what will be sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from digest.app import App
from digest.issues.assemble import (
    REBUILDABLE,
    AssemblyError,
    build_issue,
    issue_articles,
    lock_issue,
)
from digest.storage.models import Article, Issue, IssueArticle, IssueStatus


def _editable(session: Session, issue_id: int) -> Issue:
    issue = lock_issue(session, issue_id)
    if issue is None:
        raise AssemblyError(f"no issue with id {issue_id}")
    if issue.status not in REBUILDABLE:
        raise AssemblyError(f"issue {issue_id} is {issue.status}: only a draft can be changed")
    return issue


def _rebuild(app: App, issue: Issue) -> Issue:
    return build_issue(app, issue.newsletter, datetime.fromisoformat(issue.period))


def _link(session: Session, issue_id: int, article_id: int) -> IssueArticle:
    if session.get(Article, article_id) is None:
        raise AssemblyError(f"no article with id {article_id}")
    link = session.get(IssueArticle, (issue_id, article_id))
    if link is None:
        link = IssueArticle(issue_id=issue_id, article_id=article_id, position=10_000)
    return link


def pin(app: App, issue_id: int, article_id: int, *, pinned: bool = True) -> Issue:
    """Pin an article to the top (adding it if the rules did not pick it), or unpin it."""
    with app.session() as session:
        issue = _editable(session, issue_id)
        link = _link(session, issue_id, article_id)
        link.pinned, link.excluded = pinned, False
        if pinned:
            link.position = _next_pin_position(session, issue_id)
        session.add(link)
    return _rebuild(app, issue)


def exclude(app: App, issue_id: int, article_id: int, *, excluded: bool = True) -> Issue:
    """Drop an article from this issue (it stays eligible for later issues), or restore it."""
    with app.session() as session:
        issue = _editable(session, issue_id)
        link = _link(session, issue_id, article_id)
        link.excluded, link.pinned = excluded, False
        session.add(link)
    return _rebuild(app, issue)


def reorder(app: App, issue_id: int, article_ids: list[int]) -> Issue:
    """Put these articles first, in this order (they become pinned)."""
    with app.session() as session:
        issue = _editable(session, issue_id)
        for position, article_id in enumerate(article_ids):
            link = _link(session, issue_id, article_id)
            link.pinned, link.excluded, link.position = True, False, position
            session.add(link)
    return _rebuild(app, issue)


def move(app: App, issue_id: int, article_id: int, *, up: bool) -> bool:
    """Swap an article with its neighbour above (or below); it and those before it become
    pinned in that order. False when it is already first (or last)."""
    with app.session() as session:
        order = [
            link.article_id for link, _ in issue_articles(session, issue_id) if not link.excluded
        ]
    if article_id not in order:
        raise AssemblyError(f"article {article_id} is not in issue {issue_id}")
    index = order.index(article_id)
    other = index - 1 if up else index + 1
    if not 0 <= other < len(order):
        return False
    order[index], order[other] = order[other], order[index]
    reorder(app, issue_id, order[: max(index, other) + 1])
    return True


def set_subject(app: App, issue_id: int, subject: str | None) -> Issue:
    """Override the subject line (None or empty goes back to the subject template)."""
    cleaned = " ".join((subject or "").split()) or None  # no CR/LF can reach a header
    with app.session() as session:
        issue = _editable(session, issue_id)
        issue.subject_override = cleaned
        session.add(issue)
    return _rebuild(app, issue)


def set_intro(app: App, issue_id: int, intro: str) -> Issue:
    with app.session() as session:
        issue = _editable(session, issue_id)
        issue.intro = intro.strip()
        session.add(issue)
    return _rebuild(app, issue)


def approve(app: App, issue_id: int, *, by: str = "editor") -> Issue:
    """Freeze a draft for sending (recording who). A skipped issue cannot be approved."""

    def stamp(issue: Issue) -> None:
        issue.approved_at, issue.approved_by = app.now(), by

    return _move(app, issue_id, IssueStatus.DRAFT, IssueStatus.APPROVED, stamp)[0]


def unapprove(app: App, issue_id: int, *, by: str) -> Issue:
    """Send an approved issue back to draft so it can be fixed (then approved again). An issue
    whose send has started cannot be recalled."""

    def stamp(issue: Issue) -> None:
        issue.unapproved_at, issue.unapproved_by = app.now(), by
        issue.approved_at = issue.approved_by = None

    issue, moved = _move(app, issue_id, IssueStatus.APPROVED, IssueStatus.DRAFT, stamp)
    return _rebuild(app, issue) if moved else issue


_SOURCE_NAME = {IssueStatus.DRAFT: "a draft", IssueStatus.APPROVED: "an approved issue"}
_VERB = {IssueStatus.APPROVED: "approved", IssueStatus.DRAFT: "un-approved"}


def _move(
    app: App, issue_id: int, source: IssueStatus, target: IssueStatus, stamp: Any
) -> tuple[Issue, bool]:
    """Move the locked issue `source → target` (stamping who and when); already at `target` is
    a no-op. Returns the issue and whether it moved."""
    with app.session() as session:
        issue = lock_issue(session, issue_id)
        if issue is None:
            raise AssemblyError(f"no issue with id {issue_id}")
        if issue.status == target:
            return issue, False
        if issue.status != source:
            raise AssemblyError(
                f"issue {issue_id} is {issue.status}: only {_SOURCE_NAME[source]} can be "
                f"{_VERB[target]}"
            )
        issue.status = target
        stamp(issue)
        session.add(issue)
    return issue, True


def _next_pin_position(session: Session, issue_id: int) -> int:
    statement = select(IssueArticle.position).where(
        IssueArticle.issue_id == issue_id, col(IssueArticle.pinned).is_(True)
    )
    positions = list(session.exec(statement).all())
    return max(positions, default=-1) + 1
