"""The engagement rewrite of a rendered issue: pure, once per issue."""

from __future__ import annotations

from digest.rendering.engagement import extract_links, rewrite

HTML = (
    '<html><body><a href="https://news.example.com/a?x=1&amp;y=2">A</a>'
    "<a class='b' href='https://news.example.com/b'>B</a>"
    '<a href="https://news.example.com/a?x=1&amp;y=2"><img src="https://img.example/1.jpg"></a>'
    '<a href="%%UNSUBSCRIBE_URL_0123456789abcdef%%">Unsubscribe</a>'
    '<a href="https://news.example.com/c?u=%%NAME_0123456789abcdef%%">personal</a>'
    '<a href="mailto:desk@example.com">mail</a>'
    '<a href="https://digest.example/archive/tu/7">View in your browser</a>'
    "</body></html>"
)
OWN = ("https://digest.example/archive/tu", "https://digest.example/subscribe/tu")


def test_links_become_redirects_by_index_and_the_pixel_ends_the_body() -> None:
    tracked = rewrite(
        HTML, lambda i: f"https://d.example/r/7/{i}.sig", "https://d.example/o/7.s.gif", own=OWN
    )
    # the table holds each URL once, unescaped, in order of first appearance
    assert tracked.urls == ("https://news.example.com/a?x=1&y=2", "https://news.example.com/b")
    assert tracked.html.count('href="https://d.example/r/7/0.sig"') == 2
    assert "href='https://d.example/r/7/1.sig'" in tracked.html
    assert "news.example.com/a" not in tracked.html and "news.example.com/b" not in tracked.html
    # tokens, anything personal, mailto and digest's own pages stay as written
    assert 'href="%%UNSUBSCRIBE_URL_0123456789abcdef%%"' in tracked.html
    assert "c?u=%%NAME_0123456789abcdef%%" in tracked.html
    assert 'href="mailto:desk@example.com"' in tracked.html
    assert 'href="https://digest.example/archive/tu/7"' in tracked.html
    assert 'src="https://img.example/1.jpg"' in tracked.html
    assert tracked.html.endswith(
        '<img src="https://d.example/o/7.s.gif" width="1" height="1" alt="" '
        'style="display:block; width:1px; height:1px; border:0; margin:0; padding:0;">'
        "</body></html>"
    )


def test_without_tracking_nothing_changes() -> None:
    tracked = rewrite(HTML, None, None, own=OWN)
    assert tracked.html == HTML
    assert extract_links(HTML, OWN) == tracked.urls
