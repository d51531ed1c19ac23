"""Lint: each problem class on a small hand-made page, and the real issue passes clean."""

from __future__ import annotations

import pytest

from digest.rendering.lint import ERROR, MAX_BYTES, WARN_BYTES, WARNING, check
from digest.rendering.render import Renderer
from tests.support.sample_issue import sample_contents

TEXT = "Unsubscribe: %%UNSUBSCRIBE_URL%%\n"
FOOTER = '<a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a>'


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}{FOOTER}</body></html>"


def codes(html: str, text: str = TEXT) -> dict[str, str]:
    return {f.code: f.level for f in check(html, text)}


def test_clean_page_has_no_findings() -> None:
    html = page(
        '<table role="presentation"><tr><td style="color:#111; background-color:#fff">'
        '<a href="https://news.example/a">A</a> <a href="mailto:editors@news.example">Mail</a>'
        ' <a href="%%PREFERENCES_URL%%">Prefs</a>'
        '<img src="https://cdn.example/a.jpg" alt=""></td></tr></table>'
    )
    assert check(html, TEXT) == []


def test_size_warning_and_error() -> None:
    filler = "<p>" + "x" * 1000 + "</p>"
    warn = page(filler * (WARN_BYTES // 1000 + 1))
    too_big = page(filler * (MAX_BYTES // 1000 + 1))
    assert codes(warn) == {"html-large": WARNING}
    assert codes(too_big) == {"html-too-large": ERROR}
    message = check(too_big, TEXT)[0].message
    assert "KB" in message and "Gmail" in message


@pytest.mark.parametrize(
    ("body", "head", "code", "level"),
    [
        ('<div style="display:flex">x</div>', "", "css-flex-grid", WARNING),
        ('<div style="display: inline-grid;">x</div>', "", "css-flex-grid", WARNING),
        ("", "<style>.row { display: grid; }</style>", "css-flex-grid", WARNING),
        ('<div style="position:absolute; top:0">x</div>', "", "css-position", WARNING),
        ("", "<style>.badge { position: relative; }</style>", "css-position", WARNING),
        (
            "",
            '<link rel="stylesheet" href="https://cdn.example/a.css">',
            "external-stylesheet",
            ERROR,
        ),
        (
            "",
            '<style>@import url("https://cdn.example/a.css");</style>',
            "external-stylesheet",
            ERROR,
        ),
        ("<script>alert(1)</script>", "", "script", ERROR),
        ('<form action="https://x.example"><input name="q"></form>', "", "form", ERROR),
        (
            '<td style="background-image:url(https://cdn.example/bg.jpg)">x</td>',
            "",
            "background-no-fallback",
            WARNING,
        ),
        (
            '<td style="background:url(https://cdn.example/bg.jpg) no-repeat center">x</td>',
            "",
            "background-no-fallback",
            WARNING,
        ),
        (
            '<td style="background:url(https://cdn.example/bg.jpg) 10px 20px / cover">x</td>',
            "",
            "background-no-fallback",
            WARNING,
        ),
        (
            '<table><tr><td background="https://cdn.example/bg.jpg">x</td></tr></table>',
            "",
            "background-no-fallback",
            WARNING,
        ),
        (
            "",
            "<style>.hero { background-image: url(https://cdn.example/bg.jpg); }</style>",
            "background-no-fallback",
            WARNING,
        ),
        ('<img src="https://cdn.example/a.jpg">', "", "img-no-alt", WARNING),
        ('<img src="http://cdn.example/a.jpg" alt="A">', "", "img-not-https", WARNING),
        ('<a href="http://news.example/a">A</a>', "", "link-not-https", WARNING),
        ('<a href="/news/a">A</a>', "", "link-not-absolute", ERROR),
        ('<a href="javascript:alert(1)">A</a>', "", "link-not-absolute", ERROR),
        ('<a href="">A</a>', "", "link-not-absolute", ERROR),
        ('<a href="https://">A</a>', "", "link-not-absolute", ERROR),
    ],
)
def test_each_problem_class_is_found(body: str, head: str, code: str, level: str) -> None:
    assert codes(page(body, head)) == {code: level}


@pytest.mark.parametrize(
    "body",
    [
        '<td style="background-image:url(https://cdn.example/b.jpg); background-color:#123">x</td>',
        '<td style="background:#123456 url(https://cdn.example/b.jpg) no-repeat">x</td>',
        '<table><tr><td background="https://cdn.example/b.jpg" bgcolor="#123">x</td></tr></table>',
        '<td bgcolor="#123456" style="background-image:url(https://cdn.example/b.jpg)">x</td>',
    ],
)
def test_background_image_with_fallback_colour_passes(body: str) -> None:
    assert codes(page(body)) == {}


def test_missing_unsubscribe_link_is_an_error() -> None:
    html = "<html><body><p>No footer</p></body></html>"
    findings = check(html, "no footer either")
    assert [(f.level, f.code) for f in findings] == [(ERROR, "no-unsubscribe")]
    assert "HTML and text" in findings[0].message


def test_findings_are_grouped_with_examples_and_errors_first() -> None:
    images = "".join(f'<img src="https://cdn.example/{n}.jpg">' for n in range(5))
    findings = check(page(images + "<script></script>"), TEXT)
    assert [f.code for f in findings] == ["script", "img-no-alt"]
    assert findings[1].message.startswith("5 × images without alt text")
    assert "and 2 more" in findings[1].message


def test_comments_and_conditional_comments_are_ignored() -> None:
    html = page("<!--[if mso]><v:rect style='position:absolute'></v:rect><![endif]--><p>x</p>")
    assert codes(html) == {}


def test_real_rendered_issue_has_no_errors() -> None:
    rendered = Renderer().render(sample_contents(20))
    assert [f for f in check(rendered.html, rendered.text) if f.level == ERROR] == []
    assert rendered.lint == []
