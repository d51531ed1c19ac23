"""What a subscriber would receive, for editors: the issue personalised for a sample reader."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from digest.app import App
from digest.issues import timeline
from digest.mail.message import RecipientValues, build_mime, recipient_values, tokens_of
from digest.rendering import personalize
from digest.storage.models import Issue

SAMPLE_EMAIL = "reader@example.com"
SAMPLE_NAME = "Sample Reader"
SAMPLE_SUBSCRIBER_ID = 0  # no real subscriber: its links are valid-looking but unsubscribe no one


def sample_message(
    app: App, issue: Issue, to_email: str = SAMPLE_EMAIL
) -> tuple[EmailMessage, str, str]:
    """The complete message for a sample recipient, with its personalised HTML and text."""
    settings = app.settings
    newsletter = settings.newsletter(issue.newsletter)
    tokens = tokens_of(settings, issue)  # the issue's own names: content's lookalikes stay text
    values = recipient_values(
        settings,
        issue.newsletter,
        SAMPLE_SUBSCRIBER_ID,
        SAMPLE_NAME,
        app.signing_key(),
        app.now(),
        name_fallback=app.renderer.name_fallback(newsletter),
        tokens=tokens,
    )
    html = personalize.fill(issue.html, values, html_escape=True)
    text = personalize.fill(issue.text, values, html_escape=False)
    message = build_mime(
        settings=settings,
        newsletter=newsletter,
        subject=issue.subject,
        html=issue.html,
        text=issue.text,
        to_email=to_email,
        to_name=SAMPLE_NAME,
        values=values,
        tokens=tokens,
    )
    return message, html, text


def write_preview(
    app: App, slug: str, out: Path, issue: Issue | None = None, *, reader: str | None = None
) -> dict[str, Path]:
    """Write SLUG.html, SLUG.txt and SLUG.eml (for a sample recipient) into `out`.

    Without `issue`, the newsletter's next issue (built as a draft when needed). With `reader`
    (a personal newsletter), that subscriber's own email (`reader_message`); NoEmail if none.
    """
    issue = issue or timeline.next_issue(app, slug)
    out.mkdir(parents=True, exist_ok=True)
    if reader is not None:
        message, html, text = reader_message(app, issue, reader)
    else:
        message, html, text = sample_message(app, issue)
    files = {"html": out / f"{slug}.html", "text": out / f"{slug}.txt", "eml": out / f"{slug}.eml"}
    files["html"].write_text(html, encoding="utf-8")
    files["text"].write_text(text, encoding="utf-8")
    files["eml"].write_bytes(message.as_bytes())
    return files


class NoEmail(Exception):
    """The reader asked for gets no email from this issue (with the reason)."""


def reader_message(app: App, issue: Issue, email: str) -> tuple[EmailMessage, str, str]:
    """What one subscriber of a personal newsletter gets from `issue`: their own variant
    (the one frozen for them, or the one they would get now), with their name. The links are
    signed for no one, as in every preview: a preview file never holds a reader's credentials."""
    from digest.issues import personal
    from subscribers import find_subscriber

    settings = app.settings
    newsletter = settings.newsletter(issue.newsletter)
    with app.session() as session:
        try:
            subscriber = find_subscriber(session, email)
        except ValueError as exc:
            raise NoEmail(f"--as {email!r}: {exc}") from exc
        if subscriber is None or subscriber.id is None:
            raise NoEmail(f"{email}: no such subscriber")
        chosen = personal.reader_plan(app, session, issue, subscriber.id)
        if isinstance(chosen, str):
            raise NoEmail(f"{email} gets no email from this issue: {chosen}")
        links = app.links().issue_links(issue.newsletter, issue.id, archive=False)
        contents = personal.contents_for(session, settings, issue, chosen, links=links)
        name = subscriber.name
    rendered = app.renderer.render(contents)
    tokens = contents.tokens  # the footer's unfollow links extend the preferences link
    values = RecipientValues(
        settings, newsletter, app.signing_key(), app.now(),
        name_fallback=app.renderer.name_fallback(newsletter), tokens=tokens,
    )(SAMPLE_SUBSCRIBER_ID, name)  # fmt: skip
    message = build_mime(
        settings=settings, newsletter=newsletter, subject=rendered.subject, html=rendered.html,
        text=rendered.text, to_email=email, to_name=name, values=values, tokens=tokens,
    )  # fmt: skip
    html = personalize.fill(rendered.html, values, html_escape=True)
    text = personalize.fill(rendered.text, values, html_escape=False)
    return message, html, text
