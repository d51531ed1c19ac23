"""What a subscriber would receive, for editors: the issue personalised for a sample reader."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from digest.app import App
from digest.issues import timeline
from digest.mail.message import build_mime, recipient_values, tokens_of
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


def write_preview(app: App, slug: str, out: Path, issue: Issue | None = None) -> dict[str, Path]:
    """Write SLUG.html, SLUG.txt and SLUG.eml (for a sample recipient) into `out`.

    Without `issue`, the newsletter's next issue (built as a draft when needed).
    """
    issue = issue or timeline.next_issue(app, slug)
    out.mkdir(parents=True, exist_ok=True)
    message, html, text = sample_message(app, issue)
    files = {"html": out / f"{slug}.html", "text": out / f"{slug}.txt", "eml": out / f"{slug}.eml"}
    files["html"].write_text(html, encoding="utf-8")
    files["text"].write_text(text, encoding="utf-8")
    files["eml"].write_bytes(message.as_bytes())
    return files
