"""CSS inlining: what premailer must keep (media queries, !important, tokens, attributes)."""

from __future__ import annotations

import logging

import pytest

from digest.rendering.inline import inline_css
from digest.rendering.personalize import NAME, PREFERENCES_URL, UNSUBSCRIBE_URL

PAGE = """<!DOCTYPE html>
<html lang="en"><head>
<style>
.title { color: #1b1b1b; font-size: 20px; mso-line-height-rule: exactly;
  -webkit-text-size-adjust: 100%; }
.box { background-color: #f3f1ec; }
@media (max-width: 600px) { .title { font-size: 18px !important; } }
</style>
<style data-premailer="ignore">
@media (prefers-color-scheme: dark) {
  .title { color: #eeeeee !important; }
}
</style>
</head><body>
<table role="presentation" class="box"><tr><td>
<p class="title">Hi %%NAME%%,</p>
<img src="https://cdn.example/a.jpg" width="600" alt="A" style="width:100%; height:auto">
<a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a> <a href="%%PREFERENCES_URL%%">Preferences</a>
<a href="https://news.example/a?b=1&amp;c=2">Story</a>
</td></tr></table>
</body></html>
"""


@pytest.fixture(scope="module")
def inlined() -> str:
    return inline_css(PAGE)


def test_rules_move_into_style_attributes(inlined: str) -> None:
    assert '<p class="title" style="color:#1b1b1b; font-size:20px' in inlined
    assert 'bgcolor="#f3f1ec"' in inlined  # fallback attribute for old clients


def test_media_queries_keep_important(inlined: str) -> None:
    assert "font-size: 18px !important" in inlined  # leftover @media of the inlined block
    assert "@media (prefers-color-scheme: dark)" in inlined
    assert ".title { color: #eeeeee !important; }" in inlined  # ignore block kept verbatim
    assert "data-premailer" not in inlined


def test_tokens_survive(inlined: str) -> None:
    assert f'href="{UNSUBSCRIBE_URL}"' in inlined
    assert f'href="{PREFERENCES_URL}"' in inlined
    assert f"Hi {NAME}," in inlined
    assert 'href="https://news.example/a?b=1&amp;c=2"' in inlined


def test_image_width_attribute_is_kept_for_outlook(inlined: str) -> None:
    assert 'width="600"' in inlined
    assert 'height="auto"' not in inlined


def test_external_stylesheets_are_never_fetched() -> None:
    # Port 9 (discard) on a reserved address: a fetch would fail or hang; nothing is fetched.
    page = '<html><head><link rel="stylesheet" href="http://192.0.2.1:9/x.css"></head><body></body></html>'
    out = inline_css(page)
    assert 'href="http://192.0.2.1:9/x.css"' in out


def test_unknown_properties_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        inline_css(PAGE)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _plain_premailer(page: str) -> str:
    """What premailer itself gives with our settings, without our speed-ups."""
    from premailer import Premailer

    return str(
        Premailer(
            page, strip_important=False, allow_network=False, allow_loading_external_files=False,
            disable_validation=True, keep_style_tags=False, cssutils_logging_level=logging.CRITICAL,
            remove_classes=False, disable_basic_attributes=["width", "height"],
        ).transform(pretty_print=False)
    )  # fmt: skip


def test_kept_rules_give_premailers_own_output_again_and_again() -> None:
    from digest.rendering import inline
    from digest.rendering.render import Renderer
    from tests.support.sample_issue import sample_contents

    seen: list[str] = []
    real = inline.inline_css
    inline.inline_css = lambda html: seen.append(html) or real(html)  # type: ignore[assignment]
    try:
        Renderer().render(sample_contents())
    finally:
        inline.inline_css = real
    for page in (PAGE, seen[0]):
        expected = _plain_premailer(page)
        assert [inline_css(page) for _ in range(3)] == [expected] * 3


def test_floated_images_still_get_an_align_attribute_for_outlook() -> None:
    page = PAGE.replace(".box {", "img.lead { float: right; } .box {").replace(
        "<img src", '<img class="lead" src'
    )
    out = inline_css(page)
    assert 'align="right"' in out and out == _plain_premailer(page)
    assert 'align="right"' not in inline_css(PAGE)
