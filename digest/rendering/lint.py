"""Budgets and lint for a rendered issue: what Gmail or Outlook would clip, drop or break.

Findings are shown to the editor and stored with the issue. An "error" blocks sending unless
forced; a "warning" is advice. Each code appears at most once, with a count and examples.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from lxml import html as lxml_html
from lxml.etree import ParserError, _Element

from digest.rendering.contents import LintFinding
from digest.rendering.personalize import LEGACY, Tokens

WARN_BYTES = 90 * 1024  # leaves room for click-tracking rewrites before Gmail's cut
MAX_BYTES = 102 * 1024  # Gmail clips the message ("[Message clipped]") beyond about this
STYLE_BLOCK_BYTES = 16 * 1024  # Gmail drops a <style> block larger than this

ERROR = "error"
WARNING = "warning"
_EXAMPLES = 3

_COMMENTS = re.compile(r"/\*.*?\*/", re.DOTALL)
_RULE = re.compile(r"([^{}]*)\{([^{}]*)\}")
_URL = re.compile(r"url\s*\(", re.IGNORECASE)
_HTTPS = re.compile(r"^https://[^\s/?#]+", re.IGNORECASE)
_DROPPED_DISPLAY = re.compile(r"^(inline-)?(flex|grid)\b", re.IGNORECASE)
_COLOR_WORD = re.compile(r"#[0-9a-f]{3,8}\b|\b(?:rgb|hsl)a?\(|\b[a-z][a-z-]*", re.IGNORECASE)
_NOT_COLORS = frozenset(
    (
        "url", "no-repeat", "repeat", "repeat-x", "repeat-y", "center", "top", "bottom", "left",
        "right", "cover", "contain", "fixed", "scroll", "local", "none", "auto", "initial",
        "inherit", "unset", "padding-box", "border-box", "content-box", "transparent",
        "currentcolor",
    )
)  # fmt: skip


class _Findings:
    """Collects examples per (level, code) and turns them into one finding each."""

    def __init__(self) -> None:
        self._examples: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    def add(self, level: str, code: str, what: str, example: str) -> None:
        self._examples[(level, code, what)].append(example)

    def result(self) -> list[LintFinding]:
        findings = []
        for (level, code, what), examples in self._examples.items():
            unique = list(dict.fromkeys(examples))
            shown = ", ".join(_short(e) for e in unique[:_EXAMPLES])
            more = f" and {len(unique) - _EXAMPLES} more" if len(unique) > _EXAMPLES else ""
            findings.append(LintFinding(level, code, f"{len(examples)} × {what}: {shown}{more}"))
        return findings


def check(
    html: str,
    text: str,
    *,
    tokens: Tokens = LEGACY,
    content_placeholders: Iterable[str] = (),
    local_base: str | None = None,
) -> list[LintFinding]:
    """All findings for an issue's HTML and text parts, errors first.

    `local_base` is the site's own base URL when it is this machine (`http://127.0.0.1:8000`):
    its links and images (archive, demo pictures) are not reported as "not https" there.

    `tokens` are the issue's own token names; `content_placeholders` the token-looking strings
    that content or editors wrote (sent as they are, never filled: reported as a warning).
    """
    findings = _size(html)
    findings.extend(_content_placeholders(content_placeholders))
    found = _Findings()
    try:
        root = lxml_html.document_fromstring(html) if html.strip() else None
    except (ParserError, ValueError) as exc:
        return [*findings, LintFinding(ERROR, "html-unparsable", f"HTML cannot be parsed: {exc}")]
    if root is not None:
        _markup(root, found)
        _styles(root, found)
        _images(root, found, local_base)
        _links(root, found, tokens, local_base)
    findings.extend(found.result())
    findings.extend(_unsubscribe(html, text, tokens))
    return sorted(findings, key=lambda f: (f.level != ERROR, f.code))


def _size(html: str) -> list[LintFinding]:
    size = len(html.encode("utf-8"))
    kb = f"{size / 1024:.1f} KB"
    if size > MAX_BYTES:
        return [
            LintFinding(
                ERROR,
                "html-too-large",
                f"HTML is {kb}: Gmail clips messages over {MAX_BYTES // 1024} KB, hiding the "
                "rest of the issue and the unsubscribe link; remove articles or shorten them",
            )
        ]
    if size > WARN_BYTES:
        return [
            LintFinding(
                WARNING,
                "html-large",
                f"HTML is {kb}: close to Gmail's {MAX_BYTES // 1024} KB clipping limit "
                f"(budget {WARN_BYTES // 1024} KB leaves room for click tracking)",
            )
        ]
    return []


def _markup(root: _Element, found: _Findings) -> None:
    for element in root.iter("script"):
        found.add(ERROR, "script", "<script> (removed by every mail client)", _describe(element))
    for element in root.iter("form", "input", "select", "textarea", "button"):
        found.add(ERROR, "form", "form elements (Gmail and Outlook drop them)", _describe(element))
    for element in root.iter("link"):
        rel = (element.get("rel") or "").lower().split()
        if "stylesheet" in rel:
            found.add(
                ERROR,
                "external-stylesheet",
                "external stylesheets (Gmail and Outlook ignore them; inline the CSS)",
                element.get("href") or "<link>",
            )


def _styles(root: _Element, found: _Findings) -> None:
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue  # comments, processing instructions
        style = element.get("style") or ""
        declarations = _declarations(style)
        where = _describe(element)
        _check_declarations(declarations, where, found)
        has_image = bool(element.get("background")) or _has_background_image(declarations)
        if has_image and not _has_fallback_color(declarations, element):
            found.add(WARNING, "background-no-fallback", _BG_WHAT, where)
    for style_element in root.iter("style"):
        css = _COMMENTS.sub("", style_element.text or "")
        if len(css.encode("utf-8")) > STYLE_BLOCK_BYTES:
            found.add(
                WARNING,
                "style-block-large",
                f"<style> blocks over {STYLE_BLOCK_BYTES // 1024} KB (Gmail drops them)",
                f"{len(css) // 1024} KB",
            )
        if re.search(r"@import\b", css, re.IGNORECASE):
            found.add(
                ERROR,
                "external-stylesheet",
                "external stylesheets (Gmail and Outlook ignore them; inline the CSS)",
                "@import",
            )
        for selector, body in _RULE.findall(css):
            declarations = _declarations(body)
            _check_declarations(declarations, selector.strip(), found)
            if _has_background_image(declarations) and not _has_fallback_color(declarations):
                found.add(WARNING, "background-no-fallback", _BG_WHAT, selector.strip())


_BG_WHAT = "background images without a fallback colour (Outlook and image-off readers)"


def _declarations(css: str) -> list[tuple[str, str]]:
    pairs = []
    for part in css.split(";"):
        name, sep, value = part.partition(":")
        if sep:
            pairs.append((name.strip().lower(), value.strip()))
    return pairs


def _check_declarations(
    declarations: Iterable[tuple[str, str]], where: str, found: _Findings
) -> None:
    for name, value in declarations:
        if name == "display" and _DROPPED_DISPLAY.match(value):
            found.add(
                WARNING,
                "css-flex-grid",
                "display:flex/grid (Gmail and Outlook ignore it; use tables)",
                f"{where} {{display:{value}}}",
            )
        elif name == "position":
            found.add(
                WARNING,
                "css-position",
                "position (Gmail and Outlook drop it; use tables)",
                f"{where} {{position:{value}}}",
            )


def _has_background_image(declarations: Iterable[tuple[str, str]]) -> bool:
    return any(
        name in ("background", "background-image") and _URL.search(value)
        for name, value in declarations
    )


def _has_fallback_color(
    declarations: Iterable[tuple[str, str]], element: _Element | None = None
) -> bool:
    if element is not None and element.get("bgcolor"):
        return True
    for name, value in declarations:
        if name == "background-color" and value:
            return True
        if name == "background" and _background_has_color(value):
            return True
    return False


def _background_has_color(value: str) -> bool:
    without_urls = re.sub(r"url\s*\([^)]*\)", " ", value, flags=re.IGNORECASE)
    for word in _COLOR_WORD.findall(without_urls):
        if word.lower() not in _NOT_COLORS and not re.match(r"^\d", word):
            return True
    return False


def _is_local(url: str, local_base: str | None) -> bool:
    return bool(local_base) and (url == local_base or url.startswith(f"{local_base}/"))


def _images(root: _Element, found: _Findings, local_base: str | None = None) -> None:
    for image in root.iter("img"):
        src = image.get("src") or ""
        if image.get("alt") is None:
            found.add(
                WARNING,
                "img-no-alt",
                "images without alt text (screen readers; clients that block images)",
                src or "<img>",
            )
        if (
            src
            and not src.lower().startswith(("https://", "cid:"))
            and not _is_local(src, local_base)
        ):
            found.add(
                WARNING,
                "img-not-https",
                "images not served over https (blocked or warned about by clients)",
                src,
            )


def _links(root: _Element, found: _Findings, tokens: Tokens, local_base: str | None = None) -> None:
    for element in root.iter("a", "area"):
        href = (element.get("href") or "").strip()
        if element.get("href") is None or _allowed_href(href, tokens):
            continue
        lowered = href.lower()
        if _is_local(href, local_base):
            continue
        if lowered.startswith("http://"):
            found.add(WARNING, "link-not-https", "links not using https", href)
        else:
            found.add(
                ERROR,
                "link-not-absolute",
                "links that are not absolute https URLs (broken or unsafe in email)",
                href or '""',
            )


def _allowed_href(href: str, tokens: Tokens) -> bool:
    if href.startswith(tokens.all) or href.lower().startswith("mailto:"):
        return True
    return bool(_HTTPS.match(href))


def _content_placeholders(placeholders: Iterable[str]) -> list[LintFinding]:
    shown = sorted(set(placeholders))
    if not shown:
        return []
    return [
        LintFinding(
            WARNING,
            "content-placeholder",
            f"content looks like a placeholder: {', '.join(_short(p) for p in shown[:_EXAMPLES])}"
            " (sent as the literal text, never filled in; check the article or the editor's text)",
        )
    ]


def _unsubscribe(html: str, text: str, tokens: Tokens) -> list[LintFinding]:
    token = tokens.unsubscribe_url
    missing = [part for part, body in (("HTML", html), ("text", text)) if token not in body]
    if not missing:
        return []
    return [
        LintFinding(
            ERROR,
            "no-unsubscribe",
            f"the {' and '.join(missing)} part has no unsubscribe link ({{{{ unsubscribe_url }}}}) "
            "(required by law and by Gmail and Yahoo for bulk mail)",
        )
    ]


def _describe(element: _Element) -> str:
    tag = str(element.tag)
    classes = (element.get("class") or "").split()
    return f"<{tag}{'.' + '.'.join(classes) if classes else ''}>"


def _short(value: str, limit: int = 80) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
