"""CSS inlining with premailer, once per issue (never per recipient: it costs tens of ms).

Settings that matter (see REFERENCE.md §5):
- `strip_important=False`: otherwise `!important` disappears from kept `@media` rules and the
  mobile and dark-mode overrides lose to the inlined styles.
- `allow_network=False`: never fetch a `<link rel=stylesheet>` (lint reports one instead).
- Templates put rules that must stay in `<head>` (`@media`, dark mode) in a
  `<style data-premailer="ignore">` block, which premailer leaves exactly as written; the other
  `<style>` blocks are inlined and removed.
- cssutils logs a warning for every `mso-*` or `-webkit-*` property: silenced.

Speed (a personal issue inlines once per variant, hundreds per send): premailer caches the
parsed stylesheet but turns it into rules again on every call, half of its time, so the rules
of a `<style>` text are kept (`_Premailer`); and its pass that gives floated images an `align`
(for Outlook) parses every image's style, a third of its time, so it is skipped when nothing
in the page says `float` (the pass could not change anything then). Same output either way.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import cssutils
from premailer import Premailer

_QUIET = logging.CRITICAL
cssutils.log.setLevel(_QUIET)


class _Premailer(Premailer):  # type: ignore[misc]
    """Premailer with the rules of each `<style>` text kept (the settings below never vary)."""

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
        rules, leftover = _style_rules(css_body, ruleset_index)
        return list(rules), list(leftover)  # premailer extends and sorts lists of its own


@lru_cache(maxsize=64)
def _style_rules(css_body: str, ruleset_index: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    rules, leftover = Premailer._parse_style_rules(_RULES_OF, css_body, ruleset_index)
    return tuple(rules), tuple(leftover)


def inline_css(html: str) -> str:
    """HTML whose `<style>` rules are moved into `style` attributes; tokens left untouched."""
    premailer = _premailer(html)
    return str(premailer.transform(pretty_print=False))


def _premailer(html: str) -> Premailer:
    return _Premailer(
        html,
        strip_important=False,
        allow_network=False,
        allow_loading_external_files=False,
        disable_validation=True,
        keep_style_tags=False,
        cssutils_logging_level=_QUIET,
        remove_classes=False,
        # Keep the width/height attributes the templates write (Outlook sizes images by them);
        # premailer would otherwise copy CSS values such as "100%" or "auto" over them.
        disable_basic_attributes=["width", "height"],
        align_floating_images="float" in html,
    )


# The settings `_style_rules` reads (strip_important, disable_validation, the parse cache).
_RULES_OF = _premailer("")
