"""The personal newsletters' side of the unsubscribe and preferences pages (#14).

A reader of a personal newsletter (`kind = "personal"`) gets one email merging the topic
newsletters they follow; their topic subscriptions are what they follow, and with
`replaces_topic_emails` (the default) they get no separate topic emails while subscribed to it.

- The preferences page asks how they want their newsletters ("one email with everything I
  follow" or "each newsletter on its own": the personal subscription) and which topics they
  follow (the topic subscriptions), instead of one checkbox per newsletter.
- Unsubscribing from a personal email also unfollows the topics it was delivering in their
  place (`topics_to_leave`), so one click never turns one email into several.
- A topic's footer "unfollow" link (`digest.web.unfollow`; in emails sent before it, that
  topic's own unsubscribe link) leaves that topic; its pages say that the personal email will
  leave the topic out (`merged_into`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session

from digest.config import NewsletterConfig, Settings
from subscribers.membership import unsubscribe
from subscribers.models import Subscription, SubscriptionStatus

SubscriptionsBySlug = Mapping[str, Subscription]

DELIVERY_PERSONAL = "personal"  # the radio button "one email with everything I follow"
DELIVERY_SEPARATE = "separate"  # "each newsletter on its own"


def _active(current: SubscriptionsBySlug, slug: str) -> bool:
    subscription = current.get(slug)
    return subscription is not None and subscription.status == SubscriptionStatus.ACTIVE


def _merges(settings: Settings, newsletter: NewsletterConfig, topic: str) -> bool:
    return topic in {t.slug for t in settings.merged_topics(newsletter)}


def delivery_choice(
    settings: Settings, current: SubscriptionsBySlug, *preferred: str
) -> NewsletterConfig | None:
    """The personal newsletter the preferences page offers as "one email with everything I
    follow", or None (the page is one checkbox per newsletter, as without personal ones).

    Only one that replaces the topics' own emails is such a choice (a personal newsletter
    without `replaces_topic_emails` comes on top of them: it stays a checkbox). Among several:
    the first of `preferred` (the one the form showed, the link's), else the first the reader
    gets, else the first.
    """
    choices = [n for n in settings.newsletters if n.personal and n.replaces_topic_emails]
    by_slug = {n.slug: n for n in choices}
    for slug in preferred:
        if slug in by_slug:
            return by_slug[slug]
    for newsletter in choices:
        if _active(current, newsletter.slug):
            return newsletter
    return choices[0] if choices else None


def layout(
    settings: Settings, choice: NewsletterConfig | None, items: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The preferences template's values from one item per newsletter (slug → item):
    `personal` (the choice's item, or None), `topics` (its merged topics' items, the follow
    checkboxes) and `newsletters` (every other one's checkbox)."""
    if choice is None:
        return {"personal": None, "topics": [], "newsletters": list(items.values())}
    merged = [t.slug for t in settings.merged_topics(choice)]
    return {
        "personal": items[choice.slug],
        "topics": [items[slug] for slug in merged],
        "newsletters": [
            item for slug, item in items.items() if slug != choice.slug and slug not in merged
        ],
    }


def apply_delivery(
    choice: NewsletterConfig | None, delivery: str, offered: list[str], wanted: set[str]
) -> tuple[list[str], set[str]]:
    """The (offered, wanted) newsletters for `set_preferences` once the radio button is read:
    "one email" wants the personal newsletter, "each on its own" does not, and a form without
    the choice leaves the personal subscription as it is."""
    if choice is None:
        return offered, wanted
    if delivery == DELIVERY_PERSONAL:
        return offered, wanted | {choice.slug}
    if delivery == DELIVERY_SEPARATE:
        return offered, wanted - {choice.slug}
    return [slug for slug in offered if slug != choice.slug], wanted - {choice.slug}


def follows_nothing(
    settings: Settings, choice: NewsletterConfig | None, current: SubscriptionsBySlug
) -> bool:
    """Whether the reader chose one email but follows none of its topics (it would be empty)."""
    if choice is None or not _active(current, choice.slug):
        return False
    return not any(_active(current, t.slug) for t in settings.merged_topics(choice))


def topics_to_leave(
    settings: Settings, current: SubscriptionsBySlug, slug: str
) -> list[NewsletterConfig]:
    """The topics unsubscribing from the personal newsletter `slug` also unfollows: those it
    merges that the reader actively follows, when it replaces their own emails and the reader
    gets it now. A topic another such personal newsletter of theirs still carries is kept (it
    would not come as its own email, and that other newsletter still wants it)."""
    newsletter = next((n for n in settings.newsletters if n.slug == slug), None)
    if newsletter is None or not newsletter.personal or not newsletter.replaces_topic_emails:
        return []
    if not _active(current, slug):
        return []  # not getting it: its topics come as their own emails, which they keep
    return [
        topic
        for topic in settings.merged_topics(newsletter)
        if _active(current, topic.slug)
        and not any(_active(current, p) for p in settings.replaced_by(topic.slug) if p != slug)
    ]


def leave_topics(
    session: Session,
    subscriber_id: int,
    topics: Collection[NewsletterConfig],
    *,
    now: datetime,
    method: str,
    ip: str | None,
    user_agent: str | None,
    issue_id: int | None,
) -> list[str]:
    """Unfollow `topics`, each a normal unsubscribe (a consent event) credited to the personal
    issue `issue_id`; the titles of those it changed."""
    return [
        topic.title
        for topic in topics
        if unsubscribe(
            session,
            subscriber_id,
            topic.slug,
            now=now,
            method=method,
            ip=ip,
            user_agent=user_agent,
            issue_id=issue_id,
        )
    ]


def merged_into(settings: Settings, current: SubscriptionsBySlug, topic: str) -> list[str]:
    """The titles of the personal newsletters the reader gets that merge the topic `topic`:
    leaving the topic (its footer "unfollow" link) leaves it out of them."""
    return [
        n.title
        for n in settings.newsletters
        if n.personal and _active(current, n.slug) and _merges(settings, n, topic)
    ]
