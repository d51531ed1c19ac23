"""Personal newsletters: one email per reader merging the topic newsletters they follow.

Building a personal issue stores, per merged topic, its ranked candidates for the period
(`IssueCandidate`): the topic's articles in the personal newsletter's window, with the topic
editors' pins first and their exclusions left out (decisions on the topic's issues of the same
days), and the personal issue's own editors' decisions on top. The issue's own HTML is what a
reader following every topic would get; it is what editors preview and lint checks.

Each reader's email is a `variants.Plan` over these candidates; plans are stored as
`IssueVariant` rows when the audience is frozen (`digest.sending.personal_freeze`) and rendered
once per variant (`render_variant`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from digest.app import App
from digest.config import NewsletterConfig, Settings
from digest.issues.sources import reader_title, reader_titles
from digest.issues.variants import Candidate, Plan, plan, score
from digest.issues.views import article_view
from digest.rendering import personalize
from digest.rendering.contents import (
    FollowedTopic,
    IssueContents,
    IssueLinks,
    SectionView,
)
from digest.storage.models import (
    Article,
    ArticleTopic,
    Delivery,
    Issue,
    IssueArticle,
    IssueCandidate,
    IssueStatus,
    IssueVariant,
)

_C = IssueCandidate.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]
# Topic issues whose editors' decisions a personal issue follows: being shaped, or gone out.
_DECIDED = (IssueStatus.DRAFT, IssueStatus.APPROVED, IssueStatus.SENDING, IssueStatus.SENT)


def refresh(
    session: Session,
    issue: Issue,
    newsletter: NewsletterConfig,
    settings: Settings,
    period: datetime,
    now: datetime,
    own_excluded: set[int],
    own_pinned: set[int],
) -> int:
    """Store the issue's candidates for `period`; returns how many distinct articles."""
    assert issue.id is not None
    since, cutoff = period - newsletter.window_delta, min(period, now)
    session.execute(delete(_C).where(_C.c.issue_id == issue.id))
    rows: list[dict[str, object]] = []
    for topic in settings.merged_topics(newsletter):
        excluded, pinned = _topic_decisions(session, topic.slug, since)
        excluded |= own_excluded
        found = session.execute(
            select(Article.id, Article.published_at, ArticleTopic.reasons)  # type: ignore[call-overload]
            .join(ArticleTopic, col(ArticleTopic.article_id) == col(Article.id))
            .where(
                ArticleTopic.newsletter == topic.slug,
                col(Article.published_at) > since,
                col(Article.published_at) <= cutoff,
            )
        ).all()
        ranked = sorted(
            ((aid, at, list(reasons or [])) for aid, at, reasons in found if aid not in excluded),
            key=lambda row: (not (row[0] in pinned or row[0] in own_pinned), -row[1].timestamp(),
                             -row[0]),
        )  # fmt: skip
        for position, (article_id, _, reasons) in enumerate(ranked[: newsletter.max_articles]):
            is_pinned = article_id in pinned or article_id in own_pinned
            rows.append({"issue_id": issue.id, "topic": topic.slug, "article_id": article_id,
                         "position": position, "score": score(reasons, is_pinned),
                         "pinned": is_pinned})  # fmt: skip
    if rows:
        session.execute(insert(_C), rows)
    return len({row["article_id"] for row in rows})


def rebuild(
    app: App,
    session: Session,
    issue: Issue,
    newsletter: NewsletterConfig,
    period: datetime,
    now: datetime,
    excluded: set[int],
    pinned: set[int],
) -> None:
    """Refresh a personal issue's candidates; its own page is the everyone-variant."""
    found = refresh(session, issue, newsletter, app.settings, period, now, excluded, pinned)
    issue.updated_at = now
    chosen = everyone(session, app.settings, issue)
    if isinstance(chosen, str):
        store_everyone(session, issue.id or 0, Plan((), ()), app.settings)
        issue.status = IssueStatus.SKIPPED
        issue.skip_reason = (
            f"only {found} article(s) in the window across the merged topics; the minimum is "
            f"{newsletter.min_articles}"
        )
        return
    store_everyone(session, issue.id or 0, chosen, app.settings)
    issue.status = IssueStatus.DRAFT
    issue.skip_reason = None
    render_own(app, session, issue)


def render_own(app: App, session: Session, issue: Issue) -> None:
    """A personal issue's own HTML: what a reader following every merged topic would get."""
    chosen = everyone(session, app.settings, issue)
    if isinstance(chosen, str):
        return
    contents = contents_for(session, app.settings, issue, chosen, links=_links(app, issue))
    rendered = app.renderer.render(contents)
    issue.web_html = None
    issue.subject = rendered.subject
    issue.preheader = rendered.preheader
    issue.html = rendered.html
    issue.text = rendered.text
    issue.template_version = rendered.template_version
    issue.html_bytes = rendered.html_bytes
    issue.lint = [{"level": f.level, "code": f.code, "message": f.message} for f in rendered.lint]


def _links(app: App, issue: Issue) -> IssueLinks:
    return app.links().issue_links(issue.newsletter, issue.id, archive=False)


def _topic_decisions(session: Session, topic: str, since: datetime) -> tuple[set[int], set[int]]:
    """(excluded, pinned) article ids of the topic's issues of the window's days."""
    rows = session.execute(
        select(IssueArticle.article_id, IssueArticle.excluded, IssueArticle.pinned)  # type: ignore[call-overload]
        .join(Issue, col(Issue.id) == col(IssueArticle.issue_id))
        .where(
            Issue.newsletter == topic,
            col(Issue.status).in_(_DECIDED),
            col(Issue.period) > since.isoformat(),
            (col(IssueArticle.excluded)) | (col(IssueArticle.pinned)),
        )
    ).all()
    excluded = {aid for aid, ex, _ in rows if ex}
    pinned = {aid for aid, ex, pin in rows if pin and not ex} - excluded
    return excluded, pinned


def candidates_of(session: Session, issue_id: int) -> dict[str, list[Candidate]]:
    """The issue's candidates per topic, in each topic's order."""
    out: dict[str, list[Candidate]] = {}
    rows = session.execute(
        select(_C.c.article_id, _C.c.topic, _C.c.position, _C.c.score, _C.c.pinned)
        .where(_C.c.issue_id == issue_id)
        .order_by(_C.c.topic, _C.c.position)
    )
    for article_id, topic, position, points, pinned in rows:
        out.setdefault(topic, []).append(Candidate(article_id, topic, position, points, pinned))
    return out


def everyone(session: Session, settings: Settings, issue: Issue) -> Plan | str:
    """The plan of a reader who follows every merged topic and has received nothing yet."""
    newsletter = settings.newsletter(issue.newsletter)
    order = [t.slug for t in settings.merged_topics(newsletter)]
    return plan(
        candidates_of(session, issue.id or 0), order, order, (),
        min_articles=newsletter.min_articles, max_articles=newsletter.max_articles,
    )  # fmt: skip


def store_everyone(session: Session, issue_id: int, chosen: Plan, settings: Settings) -> None:
    """The issue's article rows: the everyone-plan's articles, sectioned by topic title (the
    studio lists them, editors pin and exclude them). Exclusions already there are kept."""
    titles = {n.slug: n.title for n in settings.newsletters}
    excluded = set(
        session.execute(
            select(IssueArticle.article_id).where(  # type: ignore[call-overload]
                IssueArticle.issue_id == issue_id, col(IssueArticle.excluded).is_(True)
            )
        ).scalars()
    )
    session.execute(
        delete(IssueArticle).where(
            col(IssueArticle.issue_id) == issue_id, col(IssueArticle.excluded).is_(False)
        )
    )
    position = 0
    for topic, ids in chosen.sections:
        for article_id in ids:
            if article_id not in excluded:
                section = titles.get(topic, topic)
                session.add(IssueArticle(issue_id=issue_id, article_id=article_id,
                                         position=position, section=section))  # fmt: skip
                position += 1
    session.flush()


def contents_for(
    session: Session,
    settings: Settings,
    issue: Issue,
    chosen: Plan,
    *,
    links: IssueLinks | None = None,
) -> IssueContents:
    """A variant's renderer input: one section per topic, the footer's unfollow links."""
    return VariantBuilder(session, settings, issue, links=links, articles=chosen.article_ids)(
        chosen
    )


class VariantBuilder:
    """The renderer input of any variant of one issue, from data read once: the articles, the
    topic rules that matched them and the sources' titles (a send builds hundreds of variants;
    reading them per variant cost more than rendering)."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        issue: Issue,
        *,
        links: IssueLinks | None = None,
        articles: Collection[int] | None = None,
    ) -> None:
        self.settings, self.issue, self.links = settings, issue, links
        self.newsletter = settings.newsletter(issue.newsletter)
        merged = settings.merged_topics(self.newsletter)
        self.index = {t.slug: i for i, t in enumerate(merged)}
        self.titles = {t.slug: t.title for t in merged}
        if articles is None:  # every candidate of the issue
            articles = session.execute(
                select(_C.c.article_id).where(_C.c.issue_id == issue.id).distinct()
            ).scalars().all()  # fmt: skip
        wanted = list(articles)
        self.articles: dict[int | None, Article] = {}
        for start in range(0, len(wanted), 500):
            found = select(Article).where(col(Article.id).in_(wanted[start : start + 500]))
            self.articles.update({a.id: a for a in session.execute(found).scalars()})
        self.reasons = _reasons(session, wanted)
        self.source_titles = reader_titles(session, settings)
        self.base = personalize.for_issue(
            settings.secret_key.get_secret_value().encode(),
            newsletter=issue.newsletter,
            period=issue.period,
            issue_id=issue.id,
        )

    def __call__(self, chosen: Plan) -> IssueContents:
        settings, articles, index, titles = self.settings, self.articles, self.index, self.titles
        sections = [
            SectionView(
                titles.get(topic, topic),
                [
                    article_view(articles[a], self.reasons.get((a, topic), []),
                          reader_title(self.source_titles, articles[a].source, settings))
                    for a in ids
                    if a in articles
                ],
            )
            for topic, ids in chosen.sections
        ]  # fmt: skip
        tokens = self.base  # the footer's unfollow links extend the preferences link
        issue = self.issue
        return IssueContents(
            settings=settings,
            newsletter=self.newsletter,
            issue_id=issue.id,
            period=datetime.fromisoformat(issue.period),
            sections=sections,
            subject=issue.subject_override,
            intro=issue.intro,
            tokens=tokens,
            links=self.links,
            followed=[
                FollowedTopic(t, titles.get(t, t), tokens.unfollow_link(t))
                for t in chosen.topics
                if t in index
            ],
        )


def _reasons(session: Session, article_ids: Sequence[int]) -> dict[tuple[int, str], list[str]]:
    if not article_ids:
        return {}
    rows = session.execute(
        select(ArticleTopic.article_id, ArticleTopic.newsletter, ArticleTopic.reasons).where(  # type: ignore[call-overload]
            col(ArticleTopic.article_id).in_(list(article_ids))
        )
    )
    return {(aid, slug): list(r or []) for aid, slug, r in rows}


def plan_of(variant: IssueVariant) -> Plan:
    return Plan(
        tuple(variant.topics),
        tuple((str(topic), tuple(int(a) for a in ids)) for topic, ids in variant.sections),
    )


def render_variant(app: App, session: Session, issue: Issue, variant_id: int) -> IssueVariant:
    """The variant, rendered and stored the first time it is asked for (once per variant,
    whichever sender or preview asks first; a render that loses the race is discarded)."""
    variant = session.get(IssueVariant, variant_id)
    if variant is None:
        raise LookupError(f"issue {issue.id} has no variant {variant_id}")
    if variant.html is not None:
        return variant
    contents = contents_for(
        session, app.settings, issue, plan_of(variant), links=_links(app, issue)
    )
    rendered = app.renderer.render(contents)
    session.execute(
        update(_V)
        .where(_V.c.id == variant_id, _V.c.html.is_(None))
        .values(subject=rendered.subject, html=rendered.html, text=rendered.text,
                html_bytes=rendered.html_bytes)
    )  # fmt: skip
    session.commit()
    session.refresh(variant)
    return variant


def variant_ids(
    session: Session, issue_id: int, plans: Sequence[Plan], now: datetime
) -> dict[str, int]:
    """The variant id of each plan (by key), created when new. Several freezers may create the
    same variant at once: the unique (issue, key) keeps one, the others read it."""
    keys = {p.key: p for p in plans}
    found = _existing(session, issue_id, list(keys))
    missing = [p for k, p in keys.items() if k not in found]
    if missing:
        try:
            with session.begin_nested():
                session.execute(
                    insert(_V),
                    [{"issue_id": issue_id, "key": p.key, "topics": list(p.topics),
                      "sections": p.as_json(), "articles": p.articles, "readers": 0,
                      "subject": "", "html_bytes": 0, "created_at": now}
                     for p in missing],
                )  # fmt: skip
        except IntegrityError:  # another freezer created some of them first: read theirs
            pass
        found = _existing(session, issue_id, list(keys))
    return found


def _existing(session: Session, issue_id: int, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        rows = session.execute(
            select(_V.c.key, _V.c.id).where(
                _V.c.issue_id == issue_id, _V.c.key.in_(keys[start : start + 500])
            )
        )
        out.update({key: int(vid) for key, vid in rows})
    return out


def reader_plan(app: App, session: Session, issue: Issue, subscriber_id: int) -> Plan | str:
    """What one reader gets from the issue, or why nothing: their frozen variant once the
    audience is frozen, else what they would get if it were frozen now (same rules)."""
    from digest.issues.received import History, followed_topics

    frozen = session.execute(
        select(Delivery.variant_id, Delivery.error).where(  # type: ignore[call-overload]
            Delivery.issue_id == issue.id, Delivery.subscriber_id == subscriber_id
        )
    ).first()
    if frozen is not None:
        variant = session.get(IssueVariant, frozen[0]) if frozen[0] else None
        return plan_of(variant) if variant is not None else str(frozen[1] or "skipped")
    settings = app.settings
    newsletter = settings.newsletter(issue.newsletter)
    order = [t.slug for t in settings.merged_topics(newsletter)]
    candidates = candidates_of(session, issue.id or 0)
    ids = {c.article_id for column in candidates.values() for c in column}
    history = History.load(
        session, settings, issue.id or 0, app.now() - newsletter.memory_delta, ids
    )
    receipts = history.receipts(session, subscriber_id, subscriber_id).get(subscriber_id)
    follows = followed_topics(session, order, subscriber_id, subscriber_id)
    return plan(
        candidates, order, follows.get(subscriber_id, frozenset()),
        history.received(receipts or frozenset()),
        min_articles=newsletter.min_articles, max_articles=newsletter.max_articles,
    )  # fmt: skip
