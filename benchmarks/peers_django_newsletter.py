"""django-newsletter 1.2.1 sends one message to N subscribers over SMTP (run by peers.py).

Run with the scratch virtualenv's Python (`var/peers/bin/python`), never digest's: `python
peers_django_newsletter.py WORKDIR PORT COUNT ISSUE_DIR`. Sets up a throwaway Django project on
SQLite in WORKDIR, a newsletter with COUNT subscriptions and a message whose one article holds
the issue (ISSUE_DIR/subject.txt, issue.html), then times `Submission.submit()`, which is what
its `submit_newsletter` command runs: one rendered message and one SMTP connection per
subscriber, sent in turn. The delays its settings offer are set to 0. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _configure(workdir: Path, port: int) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        SITE_ID=1,
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.sites", "newsletter"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(workdir / "newsletter.db")}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True, "OPTIONS": {}}],
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        NEWSLETTER_THUMBNAIL="sorl-thumbnail",
        NEWSLETTER_USE_HTTPS=True,
        NEWSLETTER_EMAIL_DELAY=0,
        NEWSLETTER_BATCH_DELAY=0,
        NEWSLETTER_BATCH_SIZE=0,
        LOGGING_CONFIG=None,
    )  # fmt: skip
    django.setup()


def _urls() -> list[object]:
    from django.urls import include, path

    return [path("newsletter/", include("newsletter.urls"))]


def main(workdir: Path, port: int, count: int, issue: Path) -> None:
    _configure(workdir, port)
    globals()["urlpatterns"] = _urls()  # ROOT_URLCONF is this module, once Django is set up
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from newsletter.models import Article, Message, Newsletter, Submission, Subscription

    newsletter = Newsletter.objects.create(
        title="Turkey Unpacked", slug="turkey-unpacked", email="newsletters@meridian.example",
        sender="The Meridian Post",
    )  # fmt: skip
    Subscription.objects.bulk_create(
        Subscription(newsletter=newsletter, name_field=f"Reader {n}",
                     email_field=f"reader{n:07}@example.com", subscribed=True)
        for n in range(count)
    )  # fmt: skip
    subject = (issue / "subject.txt").read_text(encoding="utf-8")
    message = Message.objects.create(title=subject, slug="issue", newsletter=newsletter)
    Article.objects.create(
        post=message, title=subject, sortorder=1,
        text=(issue / "issue.html").read_text(encoding="utf-8"),
    )  # fmt: skip
    submission = Submission.from_message(message)
    time.sleep(0.01)  # submit() asserts the publish date is in the past
    started = time.perf_counter()
    submission.submit()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "sent": count}), flush=True)


urlpatterns: list[object] = []

if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
