"""The public archive: an issue built, rendered and sent through the real code paths gets a web
page with nothing personal on it, linked from every email ("view in browser", List-Archive);
the archive lists sent issues only, its Atom feed parses, pages are cacheable; `/` lists the
newsletters. Readers see source titles, never source names."""

from __future__ import annotations

import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import feedparser
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from digest.app import App
from digest.issues import assemble
from digest.rendering import personalize
from digest.sending.send import send_issue
from digest.storage.models import Issue, IssueStatus, Source
from digest.web.server import create_app
from subscribers import add_subscriber
from tests.conftest import DEFAULT_NOW
from tests.support.articles import add_turkey_week

SLUG = "turkey-unpacked"
READER = "ayse.reader@example.com"
READER_NAME = "Ayşe Okur"


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(any_engine)


def _send_a_built_issue(app: App) -> tuple[Issue, list[EmailMessage]]:
    """Articles → assembled, rendered issue → sent to two readers by the outbox transport."""
    titles = [f"Turkey story {i + 1}: Ankara and Istanbul weigh the week" for i in range(3)]
    add_turkey_week(app, 3)
    with app.session() as session:
        session.add(Source(name="world", kind="rss", url="w.xml", title="The Post — World"))
        add_subscriber(session, READER, SLUG, now=DEFAULT_NOW, name=READER_NAME)
        add_subscriber(session, "second@example.com", SLUG, now=DEFAULT_NOW, name="Second Person")
    issue = assemble.build_issue(app, SLUG)
    assert issue.status == IssueStatus.DRAFT and issue.id is not None
    report = send_issue(app, issue.id)
    assert report.accepted == 2, report
    with app.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None and stored.status == IssueStatus.SENT
    folder = Path(app.settings.delivery.outbox_dir) / SLUG / str(issue.id)
    mails = [
        message_from_bytes(p.read_bytes(), policy=policy.default) for p in folder.glob("*.eml")
    ]
    assert len(mails) == 2 and titles
    return stored, mails  # type: ignore[return-value]


def _parts(mail: EmailMessage) -> tuple[str, str]:
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_a_sent_issue_has_a_public_page_without_anything_personal(app: App) -> None:
    issue, mails = _send_a_built_issue(app)
    client = TestClient(create_app(app))
    base = app.settings.site.base_url
    page_url = f"{base}/archive/{SLUG}/{issue.id}"

    mail = next(m for m in mails if READER in str(m["To"]))
    text, html = _parts(mail)
    assert f"View in your browser: {page_url}" in text
    assert f'href="{page_url}"' in html
    assert mail["List-Archive"] == f"<{base}/archive/{SLUG}>"
    assert READER_NAME in text  # the email itself is personal…

    answer = client.get(page_url.removeprefix(base))
    assert answer.status_code == 200
    page = answer.text
    for n in range(1, 4):  # …the page shows the issue's articles…
        assert f"Turkey story {n}: Ankara and Istanbul weigh the week" in page
    # …and nothing of any reader: no name, no token, no signed link, no unsubscribe footer.
    for personal in (READER_NAME, "Second Person", READER, "%%", "/u/", "/preferences/"):
        assert personal not in page, personal
    assert not personalize.placeholders([page])
    assert "Unsubscribe" not in page and "Manage preferences" not in page
    assert f'href="{base}/subscribe/{SLUG}"' in page  # a subscribe call-to-action instead
    assert f'<meta property="og:url" content="{page_url}">' in page
    assert f'<meta property="og:title" content="{issue.subject}">' in page
    assert 'name="twitter:card"' in page
    # Readers see the source's title (or the site's name), never its internal name.
    assert "The Post — World" in page and "The Post — World" in text
    assert '<span dir="auto">world</span>' not in page + html
    assert "\nworld · " not in text and "\nbusiness · " not in text
    # Cacheable: the same for everyone.
    assert answer.headers["cache-control"].startswith("public, max-age=")
    assert answer.headers["last-modified"]
    again = client.get(
        page_url.removeprefix(base), headers={"If-None-Match": answer.headers["etag"]}
    )
    assert again.status_code == 304


def test_the_archive_lists_sent_issues_and_the_feed_is_atom(app: App) -> None:
    issue, _ = _send_a_built_issue(app)
    client = TestClient(create_app(app))
    listing = client.get(f"/archive/{SLUG}")
    assert listing.status_code == 200
    assert f'href="{app.settings.site.base_url}/archive/{SLUG}/{issue.id}"' in listing.text
    assert issue.subject.replace("'", "&#39;") in listing.text
    assert listing.headers["etag"]

    answer = client.get(f"/archive/{SLUG}/feed.xml")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(answer.content)
    assert feed.version == "atom10" and not feed.bozo, feed.get("bozo_exception")
    assert feed.feed.title == "Turkey Unpacked"
    (entry,) = feed.entries
    assert entry.title == issue.subject
    assert entry.link == f"{app.settings.site.base_url}/archive/{SLUG}/{issue.id}"


@pytest.mark.parametrize("status", [IssueStatus.DRAFT, IssueStatus.APPROVED, IssueStatus.SKIPPED])
def test_issues_that_did_not_go_out_are_not_public(app: App, status: IssueStatus) -> None:
    add_turkey_week(app, 3)
    issue = assemble.build_issue(app, SLUG)
    with app.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None
        stored.status = status
        session.add(stored)
    client = TestClient(create_app(app))
    assert client.get(f"/archive/{SLUG}/{issue.id}").status_code == 404
    assert f"/archive/{SLUG}/{issue.id}" not in client.get(f"/archive/{SLUG}").text
    assert not feedparser.parse(client.get(f"/archive/{SLUG}/feed.xml").content).entries
    assert client.get(f"/archive/{SLUG}/nope").status_code == 404
    assert client.get("/archive/no-such-newsletter").status_code == 404


def test_a_newsletter_without_archive_has_no_page_link_or_header(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(
        any_engine,
        newsletters=[
            {"slug": SLUG, "title": "Turkey Unpacked", "archive": False,
             "topic": {"tags": ["Turkey"]}},
        ],
    )  # fmt: skip
    issue, mails = _send_a_built_issue(app)
    text, html = _parts(mails[0])
    assert "/archive/" not in text + html and "View in your browser" not in text
    assert mails[0]["List-Archive"] is None
    client = TestClient(create_app(app))
    assert client.get(f"/archive/{SLUG}/{issue.id}").status_code == 404
    assert client.get(f"/archive/{SLUG}").status_code == 404
    home = client.get("/").text
    assert f"/subscribe/{SLUG}" in home and f"/archive/{SLUG}" not in home


def test_the_home_page_lists_the_newsletters(app: App) -> None:
    answer = TestClient(create_app(app)).get("/")
    assert answer.status_code == 200
    for newsletter in app.settings.newsletters:
        assert newsletter.title in answer.text
        assert f"/subscribe/{newsletter.slug}" in answer.text
        assert f"/archive/{newsletter.slug}" in answer.text


def test_the_demo_pictures_are_served(app: App) -> None:
    client = TestClient(create_app(app))
    answer = client.get("/media/ankara-budget-debate-regional-funds.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG")
    assert client.get("/media/..%2Fsample%2Fsubscribers.csv").status_code == 404
    assert client.get("/media/missing.png").status_code == 404
    feeds = Path(__file__).resolve().parents[2] / "config" / "sample" / "feeds"
    for name in re.findall(r"/media/([a-z0-9-]+\.png)", (feeds / "world.xml").read_text()):
        assert client.get(f"/media/{name}").status_code == 200, name


def test_the_archive_pages_twenty_at_a_time_newest_first(app: App) -> None:
    from digest.web.archive import PAGE_SIZE
    from tests.support.sending import sent_issue

    ids = [sent_issue(app, period=f"2026-10-{day:02d}T05:00:00+00:00") for day in range(1, 23)]
    client = TestClient(create_app(app))
    first, second = client.get(f"/archive/{SLUG}"), client.get(f"/archive/{SLUG}?page=2")
    linked = [
        [int(i) for i in re.findall(rf"/archive/{SLUG}/(\d+)\"", page.text)]
        for page in (first, second)
    ]
    assert PAGE_SIZE == 20
    assert linked[0] == ids[::-1][:20] and linked[1] == ids[::-1][20:]
    assert f"/archive/{SLUG}?page=2" in first.text
    assert f'href="{app.settings.site.base_url}/archive/{SLUG}"' in second.text  # newer
    assert client.get(f"/archive/{SLUG}?page=3").status_code == 404


def test_one_off_mails_go_to_their_own_outbox_folders(app: App) -> None:
    from digest.ops.editors import add_editor
    from digest.storage.access import EditorRole
    from digest.web.login import mail_sign_in_link

    client = TestClient(create_app(app))
    assert client.post(f"/subscribe/{SLUG}", data={"email": "new@example.org"}).status_code == 200
    with app.session() as session:
        add_editor(session, "desk@example.com", EditorRole.EDITOR, password=None, now=app.now())
    mail_sign_in_link(app, "desk@example.com")
    outbox = Path(app.settings.delivery.outbox_dir)
    folders = sorted(p.parent.relative_to(outbox).as_posix() for p in outbox.rglob("*.eml"))
    assert folders == sorted([f"{SLUG}/confirmations", "studio/sign-in"])
