"""Value types passed between assembly, rendering and sending.

Assembly turns stored rows into an `IssueContents`; rendering turns that into a
`RenderedEmail` whose HTML and text still hold per-recipient tokens (see `personalize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from digest.config import NewsletterConfig, Settings
from digest.rendering.personalize import Tokens, random_tokens


@dataclass(frozen=True)
class ArticleView:
    id: int
    title: str
    url: str
    summary_text: str
    summary_html: str
    image_url: str | None
    author: str | None
    source: str
    published_at: datetime
    tags: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # which topic rules matched
    pinned: bool = False


@dataclass(frozen=True)
class SectionView:
    title: str
    articles: list[ArticleView]


@dataclass(frozen=True)
class FollowedTopic:
    """Personal newsletters: a topic the reader follows, for the footer's "unfollow" links."""

    slug: str
    title: str
    unfollow_url: str  # `Tokens.unfollow_link`: the reader's own signed link, filled per reader


@dataclass(frozen=True)
class IssueLinks:
    """The issue's public URLs (`digest.mail.links.Links.issue_links`): the same for everyone,
    so the templates print them (they are not tokens)."""

    subscribe_url: str
    archive_url: str | None = None  # the newsletter's archive, when it has one
    web_url: str | None = None  # this issue's archive page: "view in browser"
    feed_url: str | None = None  # the archive's Atom feed


@dataclass(frozen=True)
class IssueContents:
    """What goes into one issue, in order. Deterministic for the same inputs."""

    settings: Settings
    newsletter: NewsletterConfig
    issue_id: int | None
    period: datetime  # the scheduled moment the issue belongs to (aware)
    sections: list[SectionView]
    subject: str | None = None  # the editor's override; else the subject template decides
    intro: str = ""
    # This issue's token names (`personalize.for_issue`); fresh random ones outside an issue.
    tokens: Tokens = field(default_factory=random_tokens)
    # Public URLs; None outside an issue (previews of sample contents): no "view in browser".
    links: IssueLinks | None = None
    # Personal newsletters: the topics this variant's readers follow (sections are per topic).
    followed: list[FollowedTopic] = field(default_factory=list)

    @property
    def articles(self) -> list[ArticleView]:
        return [article for section in self.sections for article in section.articles]

    def content_texts(self) -> list[str | None]:
        """Every text that comes from content or editors rather than from the templates."""
        texts: list[str | None] = [self.subject, self.intro]
        for article in self.articles:
            texts += [article.title, article.url, article.summary_text, article.summary_html]
            texts += [article.image_url, article.author, article.source, *article.tags]
        texts += [section.title for section in self.sections]
        site, sender, newsletter = self.settings.site, self.settings.sender, self.newsletter
        texts += [site.name, site.base_url, sender.from_name, sender.postal_address]
        texts += [newsletter.title, newsletter.description]
        return texts


@dataclass(frozen=True)
class LintFinding:
    level: str  # "error" blocks sending unless forced; "warning" is shown to the editor
    code: str  # stable identifier, e.g. "html-too-large", "img-no-alt"
    message: str


@dataclass(frozen=True)
class RenderedEmail:
    """An issue rendered once: inlined HTML and plain text, both still holding tokens."""

    subject: str
    preheader: str
    html: str
    text: str
    template_version: str
    lint: list[LintFinding] = field(default_factory=list)

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))
