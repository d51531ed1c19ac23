"""Rendering an issue: golden files, tokens, escaping, direction, subject, overrides, budgets."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest.paths import templates_dir
from digest.rendering import personalize
from digest.rendering.contents import RenderedEmail
from digest.rendering.lint import ERROR, WARN_BYTES
from digest.rendering.render import TEXT_WIDTH, Renderer, RenderError
from tests.support.sample_issue import sample_article, sample_contents, sample_settings

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("DIGEST_UPDATE_GOLDEN") == "1"

FILLED = {
    personalize.UNSUBSCRIBE_URL: "https://news.example/u/abc?sig=1&x=2",
    personalize.PREFERENCES_URL: "https://news.example/p/abc?sig=1&x=2",
    personalize.NAME: "Zeynep <b>",
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture(scope="module")
def rendered(renderer: Renderer) -> RenderedEmail:
    return renderer.render(sample_contents(5))


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with DIGEST_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, (
        f"{name} differs from {path}; if the change is intended, rerun with DIGEST_UPDATE_GOLDEN=1 "
        "and review the diff"
    )


# -- golden ---------------------------------------------------------------------------------


def test_html_matches_golden(rendered: RenderedEmail) -> None:
    # Nothing volatile to mask: the fixture has fixed dates and the HTML holds no version.
    _golden("issue.html", rendered.html)


def test_text_matches_golden(rendered: RenderedEmail) -> None:
    _golden("issue.txt", rendered.text)


def test_subject_and_preheader_match_golden(rendered: RenderedEmail) -> None:
    _golden("issue.headers.txt", f"Subject: {rendered.subject}\nPreheader: {rendered.preheader}\n")


# -- tokens ---------------------------------------------------------------------------------


def test_tokens_survive_jinja_and_premailer(rendered: RenderedEmail) -> None:
    assert f'href="{personalize.UNSUBSCRIBE_URL}"' in rendered.html
    assert f'href="{personalize.PREFERENCES_URL}"' in rendered.html
    assert personalize.NAME in rendered.html
    for token in personalize.TOKENS:
        assert token in rendered.text


def test_filled_message_leaks_no_token_or_template_syntax(rendered: RenderedEmail) -> None:
    html = personalize.fill(rendered.html, FILLED, html_escape=True)
    text = personalize.fill(rendered.text, FILLED, html_escape=False)
    assert personalize.leaks(html) == []
    assert personalize.leaks(text) == []
    assert personalize.leaks(rendered.subject + rendered.preheader) == []
    assert 'href="https://news.example/u/abc?sig=1&amp;x=2"' in html
    assert "Zeynep &lt;b&gt;" in html
    assert "Unsubscribe: https://news.example/u/abc?sig=1&x=2" in text


def test_template_like_text_in_articles_is_not_evaluated(renderer: Renderer) -> None:
    contents = sample_contents(2, first={"title": "Price of {{ 7*7 }} and {% raw %}"})
    rendered = renderer.render(contents)
    assert "{{ 7*7 }}" in rendered.html  # printed as text, not rendered as 49
    assert "49" not in rendered.subject


# -- escaping and safety --------------------------------------------------------------------


def test_titles_are_escaped(renderer: Renderer) -> None:
    contents = sample_contents(
        2,
        first={
            "title": "<script>alert(1)</script>",
            "summary_html": '<img src=x onerror="alert(2)">',
            "author": '"><b>x</b>',
        },
    )
    rendered = renderer.render(contents)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<script" not in rendered.html
    assert "onerror" not in rendered.html  # summary_html is never rendered
    assert "<b>x</b>" not in rendered.html
    assert not [f for f in rendered.lint if f.code == "script"]


def test_unsafe_urls_are_not_linked(renderer: Renderer) -> None:
    contents = sample_contents(
        2, first={"url": "javascript:alert(1)", "image_url": "javascript:alert(2)"}
    )
    rendered = renderer.render(contents)
    assert "javascript:" not in rendered.html
    assert "javascript:" not in rendered.text
    assert [f for f in rendered.lint if f.level == ERROR] == []


# -- direction, language, time zone ---------------------------------------------------------


def test_arabic_newsletter_renders_right_to_left(renderer: Renderer) -> None:
    rendered = renderer.render(sample_contents(3, settings=sample_settings("ar")))
    assert '<html lang="ar" dir="rtl">' in rendered.html
    assert 'class="container"' in rendered.html
    assert rendered.html.count('dir="rtl"') >= 3  # html, page table, container
    assert "text-align:right" in rendered.html
    assert "text-align:left" not in rendered.html
    assert "إلغاء الاشتراك" in rendered.html  # "Unsubscribe"
    assert "نوفمبر" in rendered.html  # the date, in Arabic


def test_left_to_right_by_default(rendered: RenderedEmail) -> None:
    assert '<html lang="en" dir="ltr">' in rendered.html
    assert 'dir="rtl"' not in rendered.html


def test_dates_use_the_newsletter_time_zone(renderer: Renderer) -> None:
    # 22:30 UTC on Sunday is 01:30 on Monday in Istanbul.
    contents = replace(sample_contents(1), period=datetime(2026, 11, 22, 22, 30, tzinfo=UTC))
    rendered = renderer.render(contents)
    assert "Monday, November 23, 2026" in rendered.html
    assert "Sunday" not in rendered.html


def test_dates_use_the_newsletter_language(renderer: Renderer) -> None:
    rendered = renderer.render(sample_contents(1, settings=sample_settings("tr")))
    assert "23 Kasım 2026 Pazartesi" in rendered.html
    assert "Abonelikten çık" in rendered.text


def test_unknown_language_is_a_clear_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match=r"turkey-unpacked.*'xx-nope'"):
        renderer.render(sample_contents(1, settings=sample_settings("xx-nope")))


def test_name_fallback_follows_the_language(renderer: Renderer) -> None:
    assert renderer.name_fallback(sample_settings("en").newsletters[0]) == "there"
    assert renderer.name_fallback(sample_settings("pt-BR").newsletters[0]) == "there"
    assert renderer.name_fallback(sample_settings("ar").newsletters[0]) == "بك"


# -- subject and preheader ------------------------------------------------------------------


def test_subject_comes_from_the_template(rendered: RenderedEmail) -> None:
    assert rendered.subject == (
        "Turkey Unpacked: Story 1: ministers meet in Ankara as the lira steadies"
    )


def test_subject_never_holds_line_breaks(renderer: Renderer) -> None:
    contents = sample_contents(1, first={"title": "Breaking\r\nBcc: victim@example.com\n"})
    subject = renderer.render(contents).subject
    assert "\r" not in subject and "\n" not in subject
    assert subject == "Turkey Unpacked: Breaking Bcc: victim@example.com"


def test_editor_subject_wins_and_is_one_line(renderer: Renderer) -> None:
    contents = sample_contents(2, subject="  Our pick\r\nof the week ")
    assert renderer.render(contents).subject == "Our pick of the week"


def test_blank_editor_subject_falls_back_to_the_template(renderer: Renderer) -> None:
    assert renderer.render(sample_contents(1, subject="  ")).subject.startswith("Turkey Unpacked:")


def test_preheader_without_intro_lists_the_next_headlines(renderer: Renderer) -> None:
    rendered = renderer.render(sample_contents(3, intro=""))
    assert rendered.preheader.startswith("Also in this issue: Story 2:")
    assert "Here are the latest stories from Turkey Unpacked." in rendered.html


def test_empty_issue_still_renders(renderer: Renderer) -> None:
    rendered = renderer.render(sample_contents(0, intro=""))
    assert rendered.subject == "Turkey Unpacked · November 23, 2026"
    assert personalize.UNSUBSCRIBE_URL in rendered.html


# -- text part ------------------------------------------------------------------------------


def test_text_part_is_wrapped_with_numbered_links(rendered: RenderedEmail) -> None:
    lines = rendered.text.splitlines()
    assert "<" not in rendered.text
    assert "Story 1: ministers meet in Ankara as the lira steadies [1]" in lines
    assert "[1] https://meridian.example/news/2026/11/story-1?utm_source=feed&ref=a" in lines
    assert "[5] https://meridian.example/news/2026/11/story-3?utm_source=feed&ref=a" in lines
    long = [line for line in lines if len(line) > TEXT_WIDTH and "://" not in line]
    assert long == []


# -- templates: overrides, version, errors --------------------------------------------------


@pytest.fixture
def custom_templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    shutil.copytree(templates_dir() / "email", root / "email")
    custom = root / "email" / "custom"
    custom.mkdir()
    (custom / "subject.txt.j2").write_text("Custom: {{ newsletter.title }}\n", encoding="utf-8")
    (custom / "digest.html.j2").write_text(
        '{% extends "digest/digest.html.j2" %}\n'
        "{% block masthead %}<tr><td>CUSTOM MASTHEAD</td></tr>{% endblock %}\n",
        encoding="utf-8",
    )
    return root


def test_override_set_falls_back_to_the_default_files(custom_templates: Path) -> None:
    renderer = Renderer(custom_templates)
    contents = sample_contents(3, settings=sample_settings(template="custom"))
    rendered = renderer.render(contents)
    assert rendered.subject == "Custom: Turkey Unpacked"
    assert "CUSTOM MASTHEAD" in rendered.html
    assert "Story 3: ministers meet" in rendered.html  # default article markup
    assert rendered.text.startswith("Turkey Unpacked\n")  # default text template


def test_template_version_names_the_templates_used(custom_templates: Path) -> None:
    renderer = Renderer(custom_templates)
    default = renderer.render(sample_contents(1)).template_version
    custom = renderer.render(
        sample_contents(1, settings=sample_settings(template="custom"))
    ).template_version
    assert len(default) == 12 and default != custom
    assert default == renderer.template_version("digest")

    (custom_templates / "email" / "custom" / "subject.txt.j2").write_text("Changed\n")
    assert renderer.template_version("custom") != custom
    assert renderer.template_version("digest") == default
    with (custom_templates / "email" / "digest" / "components.html.j2").open("a") as file:
        file.write("\n")
    assert renderer.template_version("digest") != default


def test_edited_template_is_picked_up_without_a_new_renderer(custom_templates: Path) -> None:
    renderer = Renderer(custom_templates)
    contents = sample_contents(1, settings=sample_settings(template="custom"))
    assert renderer.render(contents).subject == "Custom: Turkey Unpacked"
    subject_file = custom_templates / "email" / "custom" / "subject.txt.j2"
    subject_file.write_text("Edited: {{ newsletter.title }}\n", encoding="utf-8")
    os.utime(subject_file, (1, 2_000_000_000))  # a later mtime, whatever the clock resolution
    assert renderer.render(contents).subject == "Edited: Turkey Unpacked"


def test_unknown_template_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=r"template 'nope'.*not found"):
        Renderer().render(sample_contents(1, settings=sample_settings(template="nope")))


def test_undefined_variable_names_file_and_line(custom_templates: Path) -> None:
    (custom_templates / "email" / "custom" / "preheader.txt.j2").write_text(
        "first line\n{{ no_such_thing }}\n", encoding="utf-8"
    )
    renderer = Renderer(custom_templates)
    contents = sample_contents(1, settings=sample_settings(template="custom"))
    with pytest.raises(RenderError, match=r"preheader\.txt\.j2, line 2.*no_such_thing"):
        renderer.render(contents)


def test_rendering_is_deterministic_and_reuses_the_environment(renderer: Renderer) -> None:
    first = renderer.render(sample_contents(4))
    second = renderer.render(sample_contents(4))
    assert first == second
    assert list(renderer._sets) == ["digest"]


# -- budgets and lint -----------------------------------------------------------------------


def test_rendered_issue_passes_lint(rendered: RenderedEmail) -> None:
    assert rendered.lint == []


def test_twenty_article_issue_stays_under_budget(renderer: Renderer) -> None:
    long_summary = "Long summary sentence that keeps going. " * 40
    contents = sample_contents(20)
    contents = replace(
        contents,
        sections=[
            replace(
                section,
                articles=[
                    replace(
                        a,
                        title=a.title + " and a much longer headline than editors would like",
                        image_url=f"https://cdn.meridian.example/images/2026/11/{a.id}.jpg",
                        author="Ayşe Demir and Mehmet Yılmaz",
                        summary_text=long_summary,
                    )
                    for a in section.articles
                ],
            )
            for section in contents.sections
        ],
    )
    rendered = renderer.render(contents)
    assert len(contents.articles) == 20
    assert rendered.html_bytes < WARN_BYTES, f"{rendered.html_bytes / 1024:.1f} KB"
    assert rendered.lint == []


def test_oversized_issue_is_reported(renderer: Renderer) -> None:
    settings = sample_settings(max_articles=200)
    contents = sample_contents(120, settings=settings)
    rendered = renderer.render(contents)
    assert [f.code for f in rendered.lint if f.level == ERROR] == ["html-too-large"]


def test_article_without_image_author_or_summary(renderer: Renderer) -> None:
    bare = sample_article(1, image_url=None, author=None, summary_text="")
    contents = replace(
        sample_contents(1), sections=[replace(sample_contents(1).sections[0], articles=[bare])]
    )
    rendered = renderer.render(contents)
    assert "<img" not in rendered.html
    assert "By " not in rendered.text
