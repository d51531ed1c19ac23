"""Rendering an issue once: Jinja2 templates → HTML (inlined once) and plain text, with tokens.

The output still holds the per-recipient tokens of `digest.rendering.personalize`; the sender
fills them.
Templates live in `templates/email/<template>/` and fall back, file by file, to the default set
in `templates/email/digest/` (see `templates/README.md`). Labels ("Read more", the greeting…)
come from `templates/email/labels.toml`, keyed by language, so a template set works in any
language that has labels and falls back to English for the rest.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    meta,
    select_autoescape,
)

from digest import paths
from digest.config import NewsletterConfig
from digest.rendering import inline, lint, personalize
from digest.rendering.contents import ArticleView, IssueContents, RenderedEmail
from digest.rendering.filters import TEXT_WIDTH, fmt, http_url, nl2br, one_line, wrap

DEFAULT_TEMPLATE = "digest"
EMAIL_DIR = "email"
LABELS_FILE = "labels.toml"
DEFAULT_LANGUAGE = "en"

HTML_TEMPLATE = "digest.html.j2"
TEXT_TEMPLATE = "digest.txt.j2"
SUBJECT_TEMPLATE = "subject.txt.j2"
PREHEADER_TEMPLATE = "preheader.txt.j2"
ENTRY_TEMPLATES = (SUBJECT_TEMPLATE, PREHEADER_TEMPLATE, HTML_TEMPLATE, TEXT_TEMPLATE)

SUBJECT_MAX = 200


class RenderError(Exception):
    """A template or configuration problem, naming the newsletter and the file or key."""


@dataclass(frozen=True)
class _TemplateSet:
    """One newsletter template name: its Jinja environment and the directories it searches."""

    name: str
    env: Environment
    search: tuple[Path, ...]


class Renderer:
    """Builds one Jinja environment per template name (cached), renders issues with it.

    Cheap to call repeatedly: environments and compiled templates are cached, and Jinja's
    auto-reload picks up edited templates (the preview studio's live reload relies on it).
    """

    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = Path(templates_dir) if templates_dir else paths.templates_dir()
        self.email_dir = self.templates_dir / EMAIL_DIR
        self._sets: dict[str, _TemplateSet] = {}
        self._closures: dict[tuple[str, str], tuple[str, ...]] = {}

    # -- public API ---------------------------------------------------------------------------

    def render(self, contents: IssueContents) -> RenderedEmail:
        """Subject, preheader, inlined HTML, text, template version and lint of one issue."""
        newsletter, settings = contents.newsletter, contents.settings
        tset = self._template_set(newsletter.template)
        context = self._context(contents)
        subject = one_line(
            contents.subject
            if contents.subject and contents.subject.strip()
            else self._render(tset, SUBJECT_TEMPLATE, context, newsletter)
        )[:SUBJECT_MAX]
        preheader = one_line(self._render(tset, PREHEADER_TEMPLATE, context, newsletter))
        context.update(subject=subject, preheader=preheader)
        html = inline.inline_css(self._render(tset, HTML_TEMPLATE, context, newsletter))
        text = self._render(tset, TEXT_TEMPLATE, context, newsletter).strip() + "\n"
        from_content = _check_placeholders(contents, subject, preheader, html, text)
        return RenderedEmail(
            subject=subject,
            preheader=preheader,
            html=html,
            text=text,
            template_version=self.template_version(newsletter.template),
            lint=lint.check(
                html,
                text,
                tokens=contents.tokens,
                content_placeholders=from_content,
                local_base=settings.site.base_url if settings.on_loopback() else None,
            ),
        )

    def render_web(self, contents: IssueContents) -> str:
        """The issue's public web page (the archive): the email's HTML for a browser, with
        nothing personal in it. No greeting by name, no unsubscribe or preferences link (a
        subscribe call-to-action instead), no token; OpenGraph and Twitter meta in the head.
        Not inlined: a browser reads the <style> block. RenderError if a token slipped in.
        """
        newsletter = contents.newsletter
        tset = self._template_set(newsletter.template)
        context = self._context(contents, web=True)
        subject = one_line(
            contents.subject
            if contents.subject and contents.subject.strip()
            else self._render(tset, SUBJECT_TEMPLATE, context, newsletter)
        )[:SUBJECT_MAX]
        preheader = one_line(self._render(tset, PREHEADER_TEMPLATE, context, newsletter))
        context.update(subject=subject, preheader=preheader)
        html = self._render(tset, HTML_TEMPLATE, context, newsletter)
        from_content = personalize.placeholders(contents.content_texts())
        leaked = (personalize.placeholders([html]) - from_content) | {
            token for token in contents.tokens.all if token in html
        }
        if leaked:
            raise RenderError(
                f"newsletter {newsletter.slug!r}: the web page would show "
                f"{', '.join(sorted(leaked))}: personal parts must sit inside "
                "{% if not web %} in the templates"
            )
        return html

    def name_fallback(self, newsletter: NewsletterConfig) -> str:
        """What the sender puts in `%%NAME%%` for a subscriber without a name ("there")."""
        labels = self._labels(self._template_set(newsletter.template), newsletter.language)
        return str(labels.get("name_fallback", ""))

    def template_version(self, template: str = DEFAULT_TEMPLATE) -> str:
        """Short hash of every template file (and labels) an issue of `template` is made from."""
        tset = self._template_set(template)
        digest = hashlib.sha256()
        for name in self._closure(tset):
            source, _ = self._source(tset, name)
            digest.update(f"{name}\0{len(source)}\0".encode())
            digest.update(source.encode())
        for labels_file in self._label_files(tset):
            digest.update(f"{labels_file.name}\0".encode())
            digest.update(labels_file.read_bytes())
        return digest.hexdigest()[:12]

    # -- environments -------------------------------------------------------------------------

    def _template_set(self, name: str) -> _TemplateSet:
        tset = self._sets.get(name)
        if tset is None:
            tset = self._sets[name] = self._build_set(name)
        return tset

    def _build_set(self, name: str) -> _TemplateSet:
        default = self.email_dir / DEFAULT_TEMPLATE
        if not default.is_dir():
            raise RenderError(f"{default}: default email templates not found")
        own = self.email_dir / name
        if name != DEFAULT_TEMPLATE and not own.is_dir():
            raise RenderError(f"template {name!r}: directory {own} not found")
        search = (own, default) if name != DEFAULT_TEMPLATE else (default,)
        # The last loader makes "digest/digest.html.j2" reachable, so an override can extend
        # the default file of the same name and change one block.
        loader = ChoiceLoader(
            [FileSystemLoader(str(path)) for path in search] + [FileSystemLoader(self.email_dir)]
        )
        env = Environment(
            loader=loader,
            autoescape=select_autoescape(
                enabled_extensions=("html", "htm", "html.j2", "htm.j2"),
                disabled_extensions=("txt", "txt.j2"),
                default_for_string=True,
                default=True,
            ),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=True,
        )
        env.filters.update(wrap=wrap, http_url=http_url, nl2br=nl2br, fmt=fmt, one_line=one_line)
        return _TemplateSet(name=name, env=env, search=search)

    def _render(
        self,
        tset: _TemplateSet,
        name: str,
        context: Mapping[str, Any],
        newsletter: NewsletterConfig,
    ) -> str:
        try:
            template: Template = tset.env.get_template(name)
            return template.render(context)
        except TemplateNotFound as exc:
            raise RenderError(
                f"newsletter {newsletter.slug!r}: template {exc.name!r} not found in "
                + ", ".join(str(p) for p in tset.search)
            ) from exc
        except Exception as exc:  # jinja2 errors carry file and line in their traceback
            where = _template_location(exc) or name
            raise RenderError(f"newsletter {newsletter.slug!r}: {where}: {exc}") from exc

    # -- context ------------------------------------------------------------------------------

    def _context(self, contents: IssueContents, *, web: bool = False) -> dict[str, Any]:
        newsletter = contents.newsletter
        settings = contents.settings
        locale = _locale(newsletter)
        tz = settings.newsletter_timezone(newsletter)
        labels = self._labels(self._template_set(newsletter.template), newsletter.language)
        # Labels write the name as `%%NAME%%` (translators' files): the issue's own token here.
        tokens = contents.tokens
        # The web page is no one's: the name is the fallback ("there"), the links are empty.
        name = str(labels.get("name_fallback", "")) if web else tokens.name
        labels = {k: v.replace(personalize.NAME, name) for k, v in labels.items()}
        links = contents.links
        articles = contents.articles
        rtl = locale.text_direction == "rtl"
        intro = contents.intro.strip()
        return {
            "settings": settings,
            "site": settings.site,
            "sender": settings.sender,
            "newsletter": newsletter,
            "issue": contents,
            "sections": contents.sections,
            "articles": articles,
            "lead": articles[0] if articles else None,
            "intro": intro,
            "intro_paragraphs": [p.strip() for p in re.split(r"\n\s*\n", intro) if p.strip()],
            "date": format_date(_local(contents.period, tz), "full", locale=locale),
            "short_date": format_date(_local(contents.period, tz), "long", locale=locale),
            "article_date": _article_date(tz, locale),
            "lang": newsletter.language,
            "dir": "rtl" if rtl else "ltr",
            "start": "right" if rtl else "left",
            "end": "left" if rtl else "right",
            "t": labels,
            "followed": [] if web else contents.followed,
            "unsubscribe_url": "" if web else tokens.unsubscribe_url,
            "preferences_url": "" if web else tokens.preferences_url,
            "name": name,
            "web": web,
            "web_url": (links.web_url if links else None) or "",
            "archive_url": (links.archive_url if links else None) or "",
            "subscribe_url": links.subscribe_url if links else "",
            "text_width": TEXT_WIDTH,
            "subject": "",
            "preheader": "",
        }

    def _labels(self, tset: _TemplateSet, language: str) -> dict[str, str]:
        """English labels, overlaid by the language's, overlaid by the template's own file."""
        merged: dict[str, str] = {}
        wanted = [DEFAULT_LANGUAGE, *_language_keys(language)]
        for labels_file in self._label_files(tset):
            try:
                table = tomllib.loads(labels_file.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise RenderError(f"{labels_file}: cannot read labels: {exc}") from exc
            for key in wanted:
                section = table.get(key, {})
                if not isinstance(section, dict):
                    raise RenderError(f"{labels_file}: [{key}] must be a table of labels")
                merged.update({k: str(v) for k, v in section.items()})
        return merged

    def _label_files(self, tset: _TemplateSet) -> list[Path]:
        candidates = [self.email_dir / LABELS_FILE]
        if tset.name != DEFAULT_TEMPLATE:
            candidates.append(self.email_dir / tset.name / LABELS_FILE)
        return [path for path in candidates if path.is_file()]

    # -- template version ---------------------------------------------------------------------

    def _source(self, tset: _TemplateSet, name: str) -> tuple[str, str]:
        assert tset.env.loader is not None
        source, filename, _ = tset.env.loader.get_source(tset.env, name)
        return source, filename or name

    def _closure(self, tset: _TemplateSet) -> tuple[str, ...]:
        """The entry templates and everything they extend, include or import, sorted."""
        seen: set[str] = set()
        pending = list(ENTRY_TEMPLATES)
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            source, filename = self._source(tset, name)
            key = (filename, hashlib.sha256(source.encode()).hexdigest())
            if key not in self._closures:
                refs = meta.find_referenced_templates(tset.env.parse(source))
                self._closures[key] = tuple(ref for ref in refs if ref is not None)
            pending.extend(self._closures[key])
        return tuple(sorted(seen))


def _check_placeholders(contents: IssueContents, *parts: str) -> set[str]:
    """The token-looking strings content wrote; RenderError for any the templates wrote.

    Every `%%…%%` in the output must be one of the issue's own tokens or come from content (a
    title, a URL, the editor's intro…), which is sent as the literal text. Anything else came
    from a template or labels file, e.g. a hard-coded `%%UNSUBSCRIBE_URL%%` instead of
    `{{ unsubscribe_url }}`: that would reach readers unfilled, so the issue is refused.
    """
    found = personalize.placeholders(parts)
    if not found:
        return set()
    from_content = personalize.placeholders(contents.content_texts())
    unknown = found - from_content - set(contents.tokens.all)
    if unknown:
        raise RenderError(
            f"newsletter {contents.newsletter.slug!r}: the templates write unknown placeholders "
            f"{', '.join(sorted(unknown))}: use {{{{ unsubscribe_url }}}}, "
            "{{ preferences_url }} and {{ name }} instead"
        )
    return found & from_content


# -- filters and helpers ----------------------------------------------------------------------


def _locale(newsletter: NewsletterConfig) -> Locale:
    try:
        return Locale.parse(newsletter.language.replace("-", "_"))
    except (UnknownLocaleError, ValueError) as exc:
        raise RenderError(
            f"newsletter {newsletter.slug!r}: language {newsletter.language!r} "
            "is not a locale babel knows (use a code such as 'en', 'ar', 'pt-BR')"
        ) from exc


def _language_keys(language: str) -> list[str]:
    """'pt-BR' → ['pt', 'pt-BR']: the broad language first, the regional variant on top."""
    base = language.split("-")[0].split("_")[0]
    return [base] if base == language else [base, language]


def _local(moment: datetime, tz: tzinfo) -> datetime:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(tz)


def _article_date(tz: tzinfo, locale: Locale) -> Callable[[ArticleView], str]:
    def article_date(article: ArticleView) -> str:
        return format_date(_local(article.published_at, tz), "medium", locale=locale)

    return article_date


def _template_location(exc: BaseException) -> str | None:
    """'digest.html.j2, line 12' from a Jinja error's attributes or its traceback."""
    name = getattr(exc, "filename", None) or getattr(exc, "name", None)
    line = getattr(exc, "lineno", None)
    if name and line:
        return f"{name}, line {line}"
    tb = exc.__traceback__
    found: str | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = f"{filename}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found
